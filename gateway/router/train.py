"""Train the quality router and measure it on held-out subjects. Pure Python, CPU, offline.

The model (routing.quality_model) is ridge regression on the target strong − weak (each 1 if
that model answered correctly): the expected gain from sending the prompt to the strong model,
which is exactly what ranking by the PGR curve rewards. It is solved exactly (preconditioned
conjugate gradients on the normal equations: deterministic, no learning rate to tune) over

- hashed word unigrams and bigrams seen in at least `min_count` training prompts, each
  prompt's set L2-normalised to `text_scale`, and
- the structural features and their pairwise products, each divided by its spread on the
  training rows (times `struct_scale`) so one penalty suits features of any scale; the
  division is folded back into the exported weights, so scoring needs no statistics.

The raw output is then calibrated (Platt: a 1-D logistic fit) to P(weak wrong and strong
right) on the training rows, and the score quantiles are stored so a policy can ask for a
share of strong calls.
"""

from __future__ import annotations

import math
import operator
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.router.dataset import Example
from routing.quality_features import FeatureConfig, extract, with_pairs
from routing.quality_model import QualityModel
from routing.router_metrics import RouterReport, evaluate, quantile

LABELS: dict[str, Callable[[float, float], float]] = {
    "diff": lambda weak, strong: strong - weak,
    "gain": lambda weak, strong: (1 - weak) * strong,
    "weak-wrong": lambda weak, strong: 1 - weak,
}


@dataclass(frozen=True, slots=True)
class TrainOptions:
    label: str = "diff"  # regression target, one of LABELS
    l2: float = 3.0  # ridge penalty (sum of squares, not averaged over rows)
    text_scale: float = 0.25  # norm of each prompt's lexical vector
    struct_scale: float = 0.02  # size of a structural feature divided by its spread
    hash_bits: int = 18
    bigrams: bool = True
    pairs: bool = True  # products of structural features
    min_count: int = 5  # a word or bigram must appear in this many training prompts
    max_iterations: int = 100
    tolerance: float = 1e-3  # relative residual at which conjugate gradients stop

    def features(self) -> FeatureConfig:
        return FeatureConfig(
            hash_bits=self.hash_bits,
            bigrams=self.bigrams,
            pairs=self.pairs,
            text_scale=self.text_scale,
        )


@dataclass(frozen=True, slots=True)
class _Design:
    """Training rows as sparse (columns, values). No bias column: _ridge centres implicitly."""

    rows: list[tuple[list[int], list[float]]]
    lexical: list[int]  # column → hashed index, for columns [0, len(lexical))
    struct: list[tuple[str, float]]  # (name, multiplier to undo on export), following columns

    @property
    def width(self) -> int:
        return len(self.lexical) + len(self.struct)


def _design(
    feats: Sequence[tuple[dict[int, float], dict[str, float]]], options: TrainOptions
) -> _Design:
    counts: Counter[int] = Counter()
    for lex, _ in feats:
        counts.update(lex.keys())
    lexical = sorted(i for i, c in counts.items() if c >= options.min_count)
    column = {index: j for j, index in enumerate(lexical)}
    n = len(feats)
    # Structural features are divided by their spread (so one penalty suits features of any
    # scale) and left uncentred: absent stays 0 and sparse, and _ridge centres implicitly.
    sums: dict[str, float] = {}
    squares: dict[str, float] = {}
    for _, struct in feats:
        for name, value in struct.items():
            sums[name] = sums.get(name, 0.0) + value
            squares[name] = squares.get(name, 0.0) + value * value
    struct_columns: dict[str, int] = {}
    multipliers: list[tuple[str, float]] = []
    for name in sorted(sums):
        mean = sums[name] / n
        std = math.sqrt(max(0.0, squares[name] / n - mean * mean))
        if std > 1e-9:
            struct_columns[name] = len(lexical) + len(multipliers)
            multipliers.append((name, options.struct_scale / std))
    scale = {name: m for name, m in multipliers}
    rows: list[tuple[list[int], list[float]]] = []
    for lex, struct in feats:
        cols = [column[i] for i in lex if i in column]
        vals = [lex[i] for i in lex if i in column]
        for name, value in struct.items():
            if name in struct_columns and value != 0.0:
                cols.append(struct_columns[name])
                vals.append(value * scale[name])
        rows.append((cols, vals))
    return _Design(rows, lexical, multipliers)


def _ridge(design: _Design, targets: Sequence[float], options: TrainOptions) -> list[float]:
    """Ridge weights (bias last, unpenalised) by preconditioned conjugate gradients.

    The columns are centred implicitly (as scikit-learn's Ridge does for sparse input), which
    takes the bias out of the system: it is then mean(y) − mean(x)·w. Without that the dense
    bias column couples to every sparse one and convergence takes several times longer.
    """
    rows = design.rows
    n = len(rows)
    width = design.width
    by_column: list[tuple[list[int], list[float]]] = [([], []) for _ in range(width)]
    for r, (cols, vals) in enumerate(rows):
        for c, v in zip(cols, vals, strict=True):
            by_column[c][0].append(r)
            by_column[c][1].append(v)
    mul = operator.mul
    l2 = options.l2
    means = [sum(vals) / n for _, vals in by_column]
    y_mean = sum(targets) / n
    centred = [t - y_mean for t in targets]

    def normal(w: list[float]) -> list[float]:
        shift = sum(map(mul, means, w))
        xw = [sum(map(mul, vals, map(w.__getitem__, cols))) - shift for cols, vals in rows]
        return [
            sum(map(mul, vals, map(xw.__getitem__, rs))) + l2 * w[c]
            for c, (rs, vals) in enumerate(by_column)
        ]

    b = [sum(map(mul, vals, map(centred.__getitem__, rs))) for rs, vals in by_column]
    # Jacobi preconditioner: the diagonal of XcᵀXc + λ. Columns differ widely in how often they
    # are set (a rare bigram vs a structural feature); scaling by it saves many iterations.
    inverse = [
        1.0 / (sum(v * v for v in vals) - n * m * m + l2)
        for (_, vals), m in zip(by_column, means, strict=True)
    ]
    w = [0.0] * width
    resid = b[:]
    z = list(map(mul, inverse, resid))
    direction = z[:]
    rz = sum(map(mul, resid, z))
    stop = (options.tolerance**2) * sum(x * x for x in b)
    for _ in range(options.max_iterations):
        if rz == 0:
            break
        ad = normal(direction)
        alpha = rz / sum(map(mul, direction, ad))
        w = [wi + alpha * di for wi, di in zip(w, direction, strict=True)]
        resid = [ri - alpha * ai for ri, ai in zip(resid, ad, strict=True)]
        if sum(x * x for x in resid) <= stop:
            break
        z = list(map(mul, inverse, resid))
        rz_new = sum(map(mul, resid, z))
        direction = [zi + (rz_new / rz) * di for zi, di in zip(z, direction, strict=True)]
        rz = rz_new
    return [*w, y_mean - sum(map(mul, means, w))]


def _platt(raw: Sequence[float], labels: Sequence[float]) -> tuple[float, float]:
    """Fit P(label) = sigmoid(a·raw + b) by Newton's method (labels may be fractional)."""
    a, b = 1.0, 0.0
    for _ in range(50):
        ga = gb = haa = hab = hbb = 0.0
        for x, y in zip(raw, labels, strict=True):
            z = a * x + b
            p = 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
            d = p - y
            h = max(p * (1 - p), 1e-12)
            ga += d * x
            gb += d
            haa += h * x * x
            hab += h * x
            hbb += h
        haa += 1e-9
        det = haa * hbb - hab * hab
        if det <= 0:
            break
        da = (hbb * ga - hab * gb) / det
        db = (haa * gb - hab * ga) / det
        a, b = a - da, b - db
        if abs(da) < 1e-10 and abs(db) < 1e-10:
            break
    return a, b


def train(
    examples: Sequence[Example],
    options: TrainOptions | None = None,
    meta: dict[str, Any] | None = None,
) -> QualityModel:
    """Fit a QualityModel on `examples` (needs at least two)."""
    options = options or TrainOptions()
    if options.label not in LABELS:
        raise ValueError(f"unknown label {options.label!r}: one of {', '.join(LABELS)}")
    if len(examples) < 2:
        raise ValueError("need at least two examples to train")
    config = options.features()
    extracted = [extract(e.text, config) for e in examples]
    ranges = _ranges([struct for _, struct in extracted])
    feats = [(lex, with_pairs(struct) if config.pairs else struct) for lex, struct in extracted]
    design = _design(feats, options)
    target = LABELS[options.label]
    w = _ridge(design, [target(e.weak, e.strong) for e in examples], options)
    base = len(design.lexical)
    bias = w[-1]
    lexical = {index: w[j] for j, index in enumerate(design.lexical) if w[j] != 0.0}
    structural = {
        name: w[base + k] * multiplier for k, (name, multiplier) in enumerate(design.struct)
    }
    model = QualityModel(config, bias, lexical, structural, ranges=ranges)
    raw = [model.raw(e.text) for e in examples]
    a, b = _platt(raw, [LABELS["gain"](e.weak, e.strong) for e in examples])
    calibrated = QualityModel(config, bias, lexical, structural, a, b, ranges=ranges)
    scores = sorted(calibrated.calibrate(x) for x in raw)
    info: dict[str, Any] = {
        "examples": len(examples),
        "groups": len({e.group for e in examples}),
        "label": options.label,
        "l2": options.l2,
        "struct_scale": options.struct_scale,
        "min_count": options.min_count,
    }
    info.update(meta or {})
    return QualityModel(
        config,
        bias,
        lexical,
        structural,
        a,
        b,
        tuple(quantile(scores, i / 20) for i in range(21)),
        ranges,
        info,
    )


def _ranges(structs: Sequence[dict[str, float]]) -> dict[str, tuple[float, float]]:
    """Each structural feature's (min, max) over the rows where it is present."""
    ranges: dict[str, tuple[float, float]] = {}
    for struct in structs:
        for name, value in struct.items():
            lo, hi = ranges.get(name, (value, value))
            ranges[name] = (min(lo, value), max(hi, value))
    return ranges


def score_all(model: QualityModel, examples: Sequence[Example]) -> RouterReport:
    """RouteLLM's metrics of `model` on `examples`."""
    scores = [model.score(e.text) for e in examples]
    return evaluate(scores, [e.weak for e in examples], [e.strong for e in examples])


@dataclass(frozen=True, slots=True)
class Fold:
    groups: tuple[str, ...]  # the held-out subjects
    report: RouterReport


@dataclass(frozen=True, slots=True)
class CrossValidation:
    folds: list[Fold]
    # Every prompt scored by the model that did not see its subject, evaluated as one set:
    # steadier than the per-fold mean, whose folds can have a tiny strong−weak gap.
    pooled: RouterReport
    scores: list[float]  # the out-of-fold score of each example, in input order


def split_groups(groups: Sequence[str], folds: int, seed: int = 0) -> list[list[str]]:
    """Deal the distinct groups, shuffled by `seed`, round-robin into `folds` folds."""
    distinct = sorted(set(groups))
    if folds < 2:
        raise ValueError("need at least 2 folds")
    if len(distinct) < folds:
        raise ValueError(f"{len(distinct)} groups cannot make {folds} folds")
    random.Random(seed).shuffle(distinct)
    return [sorted(distinct[i::folds]) for i in range(folds)]


def cross_validate(
    examples: Sequence[Example],
    folds: int = 5,
    seed: int = 0,
    options: TrainOptions | None = None,
    progress: Callable[[Fold], None] | None = None,
) -> CrossValidation:
    """Leave-groups-out: train without each fold's subjects, evaluate on them."""
    results: list[Fold] = []
    scores = [math.nan] * len(examples)
    for held in split_groups([e.group for e in examples], folds, seed):
        out = set(held)
        train_rows = [e for e in examples if e.group not in out]
        test_at = [i for i, e in enumerate(examples) if e.group in out]
        model = train(train_rows, options)
        for i in test_at:
            scores[i] = model.score(examples[i].text)
        fold = Fold(
            tuple(held),
            evaluate(
                [scores[i] for i in test_at],
                [examples[i].weak for i in test_at],
                [examples[i].strong for i in test_at],
            ),
        )
        results.append(fold)
        if progress is not None:
            progress(fold)
    pooled = evaluate(scores, [e.weak for e in examples], [e.strong for e in examples])
    return CrossValidation(results, pooled, scores)
