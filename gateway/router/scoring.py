"""The scorer a `strategy: quality` route calls per request: a loaded router model."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.core.live_routing import Scorer
from gateway.router.model_io import ModelFileError, default_model, load_model
from routing.model import RouteSpec
from routing.quality_model import QualityModel

# A request with no text to judge (e.g. only images): neither side is favoured.
NEUTRAL = 0.5


def load_scorer(path: str | None) -> Scorer:
    """The route's own model file, or the one shipped with Farebox."""
    model = default_model() if path is None else load_model(Path(path))

    def score(payload: Mapping[str, Any]) -> float:
        value = model.score_payload(payload)
        return NEUTRAL if value is None else value

    return score


def _model(path: str | None) -> QualityModel:
    return default_model() if path is None else load_model(Path(path))


def quality_target_problem(path: str | None, target: float) -> str | None:
    """Why a route's `target_quality` cannot be met by its router model, or None."""
    try:
        model = _model(path)
    except ModelFileError as exc:
        return f"cannot read the router model: {exc}"
    if not model.curve:
        return (
            "the router model holds no quality curve: train it again with "
            "`farebox router train` (its --curve-folds make one)"
        )
    if model.share_for_quality(target) is None:
        best = max(pgr for _share, pgr in model.curve)
        return f"the router model's curve never reaches {target:g} (its best is {best:.2f})"
    return None


def with_target_shares(
    routes: Mapping[str, RouteSpec], targets: Mapping[str, float]
) -> dict[str, RouteSpec]:
    """`routes` with each `target_quality` (route name → target) turned into the strong
    share its router model's cross-validated curve says reaches it."""
    out = dict(routes)
    for name, target in targets.items():
        spec = out[name]
        share = _model(spec.router_model).share_for_quality(target)
        if share is None:  # config check refuses such a target; load the route anyway
            share = 1.0
        out[name] = dataclasses.replace(spec, strong_share=share)
    return out
