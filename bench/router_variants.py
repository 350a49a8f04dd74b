"""Quality router v2, step 1 (issue 28): which features transfer to subjects a router never saw.

    .venv/bin/python bench/router_variants.py     # ~5 min -> prints the table, bench/.work/router/

Every variant is scored with the same protocol as `farebox router cv`: leave-subjects-out,
5 folds × 5 shuffles (seeds 0-4) of the 40 MMLU subjects in ../shared/data/router/mmlu, the
out-of-fold scores pooled into one curve per shuffle, APGR averaged over the shuffles — with
every subject, and with `high_school_mathematics` left out of the scoring (a format artefact:
GPT-4 scores 3 % there, see bench/ROUTER.md). Variants:

- `lexical`: the shipped model (hashed words and bigrams, structural cues, ridge), refitted
  per fold by gateway.router.train;
- `wordllama ridge`: ridge regression on the prompt's wordllama embedding (the static
  word-embedding model the semantic cache ships: 256 dimensions, no download);
- `wordllama kNN`: the mean label of the k most similar training prompts (cosine);
- `wordllama MLP`: one hidden layer (64 ReLU units) on the embedding, Adam, early stopped
  on a held-out slice of the training subjects;
- `difficulty cues`: ridge on tokenizer-rank and length statistics (cl100k ranks as a
  word-rarity proxy, token count, digit share, longest line share), squared terms too;
- `lexical + X`: the lexical score plus α × a variant's score (both standardised), the
  combination the issue asks to try, for α from 0.1 to 0.5.

The label is strong-correct minus weak-correct throughout (the shipped model's).
"""

from __future__ import annotations

import pickle
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.router.dataset import load  # noqa: E402
from gateway.router.train import cross_validate, split_groups  # noqa: E402
from routing.router_metrics import evaluate  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "router" / "mmlu"
WORK = ROOT / "bench" / ".work" / "router"
SEEDS = (0, 1, 2, 3, 4)
FOLDS = 5
ARTEFACT = "high_school_mathematics"
Array = npt.NDArray[np.float64]
FitPredict = Callable[[npt.NDArray[np.bool_], npt.NDArray[np.bool_]], Array]


def main() -> int:
    WORK.mkdir(parents=True, exist_ok=True)
    examples, _dropped = load([DATA])
    texts = [e.text for e in examples]
    groups = np.array([e.group for e in examples])
    weak = np.array([e.weak for e in examples])
    strong = np.array([e.strong for e in examples])
    label = strong - weak

    def pooled(scores: Array) -> tuple[float, float]:
        keep = groups != ARTEFACT
        every = evaluate(list(scores), list(weak), list(strong)).apgr
        without = evaluate(list(scores[keep]), list(weak[keep]), list(strong[keep])).apgr
        return every, without

    def out_of_fold(fit_predict: FitPredict, seed: int) -> Array:
        scores = np.full(len(examples), np.nan)
        for held in split_groups(list(groups), FOLDS, seed):
            test = np.isin(groups, held)
            scores[test] = fit_predict(~test, test)
        return scores

    lexical = _lexical(examples)
    embedded = _embeddings(texts)
    cues = _cues(texts)
    variants: dict[str, FitPredict] = {
        "wordllama ridge": _ridge(embedded, label, 100.0),
        "wordllama kNN (k=50)": _knn(embedded, label, 50),
        "wordllama MLP": _mlp(embedded, label),
        "difficulty cues": _ridge(np.hstack([cues, cues**2]), label, 10.0),
    }
    rows: list[tuple[str, float, float]] = []
    rows.append(("lexical (shipped)", *np.mean([pooled(lexical[s]) for s in SEEDS], axis=0)))
    print(_row(rows[-1]), flush=True)
    for name, fit_predict in variants.items():
        scores = {seed: out_of_fold(fit_predict, seed) for seed in SEEDS}
        rows.append((name, *np.mean([pooled(scores[s]) for s in SEEDS], axis=0)))
        print(_row(rows[-1]), flush=True)
        for alpha in (0.1, 0.2, 0.5):
            blended = [pooled(_z(lexical[s]) + alpha * _z(scores[s])) for s in SEEDS]
            rows.append((f"lexical + {alpha:g} × {name}", *np.mean(blended, axis=0)))
            print(_row(rows[-1]), flush=True)
    print("\n| variant | pooled APGR, every subject | pooled APGR, without hs maths |")
    print("|---|---:|---:|")
    for row in rows:
        print(f"| {row[0]} | {row[1]:.3f} | {row[2]:.3f} |")
    return 0


def _row(row: tuple[str, float, float]) -> str:
    return f"{row[0]}: {row[1]:.3f} / {row[2]:.3f} without {ARTEFACT}"


def _z(values: Array) -> Array:
    return (values - np.nanmean(values)) / np.nanstd(values)


def _lexical(examples: list) -> dict[int, Array]:  # type: ignore[type-arg]
    """The shipped model's out-of-fold scores per shuffle (cached: ~40 s a shuffle)."""
    cache = WORK / "lexical.pkl"
    if cache.exists():
        cached: dict[int, Array] = pickle.loads(cache.read_bytes())
        return cached
    scores = {seed: np.array(cross_validate(examples, FOLDS, seed).scores) for seed in SEEDS}
    cache.write_bytes(pickle.dumps(scores))
    return scores


def _embeddings(texts: list[str]) -> Array:
    from gateway.cache.semantic import embed

    return np.asarray(embed(texts), dtype=np.float64)


def _cues(texts: list[str]) -> Array:
    from gateway.ledger.tokens import _encoding

    encoding = _encoding("cl100k_base")
    assert encoding is not None
    rows = []
    for text in texts:
        ids = np.array(encoding.encode(text) or [0])
        ranks = np.log1p(ids)
        lines = text.split("\n")
        rows.append(
            [
                np.log1p(len(ids)),
                ranks.mean(),
                np.percentile(ranks, 90),
                (ids > 30000).mean(),
                (ids > 60000).mean(),
                sum(c.isdigit() for c in text) / max(1, len(text)),
                len(max(lines, key=len)) / max(1, len(text)),
            ]
        )
    cues = np.array(rows)
    return (cues - cues.mean(0)) / (cues.std(0) + 1e-9)


def _ridge(x: Array, y: Array, l2: float) -> FitPredict:
    def fit_predict(train: npt.NDArray[np.bool_], test: npt.NDArray[np.bool_]) -> Array:
        mean = x[train].mean(0)
        centred = x[train] - mean
        gram = centred.T @ centred + l2 * np.eye(x.shape[1])
        w = np.linalg.solve(gram, centred.T @ (y[train] - y[train].mean()))
        return np.asarray((x[test] - mean) @ w)

    return fit_predict


def _knn(x: Array, y: Array, k: int) -> FitPredict:
    def fit_predict(train: npt.NDArray[np.bool_], test: npt.NDArray[np.bool_]) -> Array:
        similarity = x[test] @ x[train].T
        nearest = np.argpartition(-similarity, k, axis=1)[:, :k]
        return np.asarray(y[train][nearest].mean(1))

    return fit_predict


def _mlp(x: Array, y: Array, hidden: int = 64, epochs: int = 60, lr: float = 1e-3) -> FitPredict:
    def fit_predict(train: npt.NDArray[np.bool_], test: npt.NDArray[np.bool_]) -> Array:
        rng = np.random.default_rng(0)
        rows = np.flatnonzero(train)
        rng.shuffle(rows)
        cut = len(rows) // 10  # a held-out slice of the training prompts stops the fit
        valid, fit = rows[:cut], rows[cut:]
        params = [
            rng.normal(0, 1 / np.sqrt(x.shape[1]), (x.shape[1], hidden)),
            np.zeros(hidden),
            rng.normal(0, 1 / np.sqrt(hidden), hidden),
            np.zeros(1),
        ]
        moments = [(np.zeros_like(p), np.zeros_like(p)) for p in params]

        def forward(data: Array) -> tuple[Array, Array]:
            h = np.maximum(0, data @ params[0] + params[1])
            return h, h @ params[2] + params[3]

        best, best_params, step = np.inf, [p.copy() for p in params], 0
        for _ in range(epochs):
            for start in range(0, len(fit), 64):
                batch = fit[start : start + 64]
                h, out = forward(x[batch])
                err = (out - y[batch]) / len(batch)
                grad_h = np.outer(err, params[2]) * (h > 0)
                grads = [x[batch].T @ grad_h, grad_h.sum(0), h.T @ err, np.array([err.sum()])]
                step += 1
                for p, g, (m, v) in zip(params, grads, moments, strict=True):
                    m *= 0.9
                    m += 0.1 * g
                    v *= 0.999
                    v += 0.001 * g * g
                    p -= lr * (m / (1 - 0.9**step)) / (np.sqrt(v / (1 - 0.999**step)) + 1e-8)
            loss = float(np.mean((forward(x[valid])[1] - y[valid]) ** 2))
            if loss < best:
                best, best_params = loss, [p.copy() for p in params]
        params[:] = best_params
        return np.asarray(forward(x[test])[1])

    return fit_predict


if __name__ == "__main__":
    raise SystemExit(main())
