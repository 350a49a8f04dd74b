"""The quality router's model: from the prompt alone, how likely the strong model is needed.

A linear model over routing.quality_features (hashed words and bigrams, structural cues and
products of pairs of those cues), trained by gateway.router.train to predict strong-correct
minus weak-correct, then squashed by a fitted logistic (Platt) curve into P(weak model wrong
and strong model right). Higher score = send to the strong model. The squashing is monotone,
so the ranking — all that APGR and a share-of-strong-calls policy use — is the regression's.

Pure: built from a plain dict (gateway.router.model_io reads the file), no I/O here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise, repeat
from operator import mul
from typing import Any

from routing.quality_features import FeatureConfig, lexical_indices, structural, tokens

FORMAT = "farebox-quality-router"
VERSION = 1


def _text_of_content(content: Any) -> str:
    """Text of one chat message content: a string, or a list of parts (OpenAI/Anthropic)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [
            part["text"]
            for part in content
            if isinstance(part, Mapping)
            and part.get("type", "text") == "text"
            and isinstance(part.get("text"), str)
        ]
        return "\n".join(texts)
    return ""


def text_of(payload: Mapping[str, Any]) -> str:
    """The text the router judges: the completion `prompt`, or the last user turn of `messages`.

    Only the last user turn, not the system prompt or earlier turns: a system prompt is usually
    the same for every request of an application, so it would make all of them look alike (and
    inflate the length cues), and the latest user request is what the answer must get right —
    RouteLLM routes on that turn too. With no user turn, the last message with text is used.
    Returns "" when there is no text at all.
    """
    prompt = payload.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        return "\n".join(prompt)
    messages = payload.get("messages")
    if not isinstance(messages, list):
        return ""
    fallback = ""
    for message in reversed(messages):
        if not isinstance(message, Mapping):
            continue
        text = _text_of_content(message.get("content"))
        if not text:
            continue
        if message.get("role") == "user":
            return text
        if not fallback:
            fallback = text
    return fallback


def _round(x: float, digits: int, direction: Any) -> float:
    """`x` to `digits` significant digits, rounding with `direction` (math.floor or ceil)."""
    if x == 0 or not math.isfinite(x):
        return x
    scale = 10 ** (digits - 1 - math.floor(math.log10(abs(x))))
    return float(direction(x * scale) / scale)


def _float(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number")
    return float(value)


@dataclass(frozen=True, slots=True)
class QualityModel:
    """Weights over hashed lexical and named structural features, plus a calibration curve."""

    config: FeatureConfig
    bias: float
    lexical: Mapping[int, float]
    structural: Mapping[str, float]
    calib_a: float = 1.0  # score = sigmoid(calib_a * raw + calib_b)
    calib_b: float = 0.0
    # Scores at training quantiles 0 %, 5 %, … 100 %: lets a policy pick a strong-call share.
    quantiles: Sequence[float] = ()
    # Training range of each structural feature: values outside are clamped into it, so a
    # prompt unlike any training prompt (a two-word chat turn) is not extrapolated through
    # the quadratic terms.
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)
    # What the router recovered on prompts of subjects it was not trained on (its training
    # run's leave-groups-out cross-validation): (share of calls sent strong, PGR) points,
    # shares increasing. Lets a route ask for a quality instead of a share.
    curve: Sequence[tuple[float, float]] = ()
    # Derived from `structural` for scoring: plain weights, and pair weights "a*b" as a
    # symmetric table (off-diagonal halved) so the products sum in one pass per feature.
    _linear: dict[str, float] = field(init=False, repr=False, compare=False)
    _pairs: dict[str, dict[str, float]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        linear: dict[str, float] = {}
        pairs: dict[str, dict[str, float]] = {}

        def add(a: str, b: str, weight: float) -> None:
            row = pairs.setdefault(a, {})
            row[b] = row.get(b, 0.0) + weight

        for name, weight in self.structural.items():
            a, star, b = name.partition("*")
            if not star:
                linear[name] = weight
            elif a == b:
                add(a, a, weight)
            else:
                add(a, b, weight / 2)
                add(b, a, weight / 2)
        object.__setattr__(self, "_linear", linear)
        object.__setattr__(self, "_pairs", pairs)

    def raw(self, text: str) -> float:
        """The regression's output: an estimate of P(strong right) − P(weak right)."""
        window, lower, words, length = tokens(text, self.config)
        indices, value = lexical_indices(words, self.config)
        # All lexical features carry the same value, so one sum of looked-up weights will do.
        total = self.bias + value * sum(map(self.lexical.get, indices, repeat(0.0)))
        if not self.config.structural:
            return total
        struct = structural(window, lower, words, length)
        for name, (lo, hi) in self.ranges.items():
            found = struct.get(name)
            if found is not None and not lo <= found <= hi:
                struct[name] = lo if found < lo else hi
        linear = self._linear
        for name, value in struct.items():
            w = linear.get(name)
            if w is not None:
                total += w * value
        if self._pairs:
            names, values = list(struct), list(struct.values())
            for name, value in zip(names, values, strict=True):
                row = self._pairs.get(name)
                if row is not None:
                    total += value * sum(map(mul, map(row.get, names, repeat(0.0)), values))
        return total

    def calibrate(self, raw: float) -> float:
        z = self.calib_a * raw + self.calib_b
        # Written both ways round so exp never overflows.
        if z >= 0:
            return 1.0 / (1.0 + math.exp(-z))
        e = math.exp(z)
        return e / (1.0 + e)

    def score(self, text: str) -> float:
        """P(the weak model fails where the strong one succeeds), in [0, 1]; higher = strong."""
        return self.calibrate(self.raw(text))

    def score_payload(self, payload: Mapping[str, Any]) -> float | None:
        """Score a completion or chat request body; None when it carries no text to judge."""
        text = text_of(payload)
        return self.score(text) if text else None

    def threshold_for_share(self, share: float) -> float:
        """The score threshold that sent `share` of the training prompts to the strong model.

        Route to strong when score >= the returned value. Only as good as the training
        traffic's resemblance to real traffic. +inf for share <= 0, -inf for share >= 1, and
        0.5 for a model without stored quantiles.
        """
        if share <= 0 or not self.quantiles:
            return math.inf if share <= 0 else 0.5
        if share >= 1:
            return -math.inf
        qs = self.quantiles
        pos = (1.0 - share) * (len(qs) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(qs) - 1)
        return qs[lo] + (qs[hi] - qs[lo]) * (pos - lo)

    def share_for_quality(self, target: float) -> float | None:
        """The smallest share of strong calls at which the cross-validated curve recovers
        `target` of the strong model's quality gain over the weak one (PGR, interpolated);
        None without a stored curve or when the curve never reaches it."""
        curve = self.curve
        if not curve:
            return None
        if curve[0][1] >= target:
            return curve[0][0]
        for (share_a, pgr_a), (share_b, pgr_b) in pairwise(curve):
            if pgr_b >= target:
                if pgr_b == pgr_a:
                    return share_b
                return share_a + (target - pgr_a) / (pgr_b - pgr_a) * (share_b - share_a)
        return None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QualityModel:
        """Build from the JSON document gateway.router.model_io reads; ValueError if malformed."""
        if data.get("format") != FORMAT:
            raise ValueError(f"not a quality router model (format is not {FORMAT!r})")
        if data.get("version") != VERSION:
            raise ValueError(f"unsupported quality router model version {data.get('version')!r}")
        features = data.get("features", {})
        if not isinstance(features, dict):
            raise ValueError("'features' must be an object")
        config = FeatureConfig.from_dict(features)
        lex = data.get("lexical", {})
        if not isinstance(lex, Mapping):
            raise ValueError("'lexical' must be an object")
        indices, values = lex.get("indices", []), lex.get("values", [])
        if not isinstance(indices, list) or not isinstance(values, list):
            raise ValueError("'lexical' needs lists 'indices' and 'values'")
        if len(indices) != len(values):
            raise ValueError("'lexical' indices and values differ in length")
        limit = 1 << config.hash_bits
        lexical: dict[int, float] = {}
        for i, v in zip(indices, values, strict=True):
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < limit:
                raise ValueError(f"lexical index {i!r} is outside the hash space")
            lexical[i] = _float(v, "a lexical weight")
        struct = data.get("structural", {})
        if not isinstance(struct, Mapping):
            raise ValueError("'structural' must be an object")
        structural = {str(k): _float(v, f"structural weight {k!r}") for k, v in struct.items()}
        calib = data.get("calibration", {"a": 1.0, "b": 0.0})
        if not isinstance(calib, Mapping):
            raise ValueError("'calibration' must be an object")
        quantiles = data.get("quantiles", [])
        if not isinstance(quantiles, list):
            raise ValueError("'quantiles' must be a list")
        ranges = data.get("ranges", {})
        if not isinstance(ranges, Mapping) or not all(
            isinstance(r, list) and len(r) == 2 for r in ranges.values()
        ):
            raise ValueError("'ranges' must map names to [low, high]")
        meta = data.get("meta", {})
        curve = data.get("pgr_curve", [])
        if not isinstance(curve, list) or not all(
            isinstance(p, list) and len(p) == 2 for p in curve
        ):
            raise ValueError("'pgr_curve' must be a list of [strong share, PGR] pairs")
        points = tuple((_float(a, "a curve share"), _float(b, "a curve PGR")) for a, b in curve)
        if any(b[0] < a[0] for a, b in pairwise(points)):
            raise ValueError("'pgr_curve' shares must not decrease")
        return cls(
            config=config,
            bias=_float(data.get("bias", 0.0), "'bias'"),
            lexical=lexical,
            structural=structural,
            calib_a=_float(calib.get("a", 1.0), "calibration 'a'"),
            calib_b=_float(calib.get("b", 0.0), "calibration 'b'"),
            quantiles=tuple(_float(q, "a quantile") for q in quantiles),
            ranges={
                str(k): (_float(r[0], "a range"), _float(r[1], "a range"))
                for k, r in ranges.items()
            },
            meta=dict(meta) if isinstance(meta, Mapping) else {},
            curve=points,
        )

    def as_dict(self, digits: int = 5) -> dict[str, Any]:
        """The JSON document; weights rounded to `digits` significant digits to keep it small."""

        def r(x: float) -> float:
            return float(f"{x:.{digits}g}")

        items = sorted(self.lexical.items())
        return {
            "format": FORMAT,
            "version": VERSION,
            "features": self.config.as_dict(),
            "bias": r(self.bias),
            "calibration": {"a": r(self.calib_a), "b": r(self.calib_b)},
            "structural": {k: r(v) for k, v in sorted(self.structural.items())},
            "lexical": {"indices": [i for i, _ in items], "values": [r(v) for _, v in items]},
            "quantiles": [r(q) for q in self.quantiles],
            # Rounded outward, so a training value is never clamped by the rounding.
            "ranges": {
                k: [_round(lo, digits, math.floor), _round(hi, digits, math.ceil)]
                for k, (lo, hi) in sorted(self.ranges.items())
            },
            "meta": dict(self.meta),
            **({"pgr_curve": [[r(a), r(b)] for a, b in self.curve]} if self.curve else {}),
        }
