"""The scorer a `strategy: quality` route calls per request: a loaded router model."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.core.live_routing import Scorer
from gateway.router.model_io import default_model, load_model

# A request with no text to judge (e.g. only images): neither side is favoured.
NEUTRAL = 0.5


def load_scorer(path: str | None) -> Scorer:
    """The route's own model file, or the one shipped with Farebox."""
    model = default_model() if path is None else load_model(Path(path))

    def score(payload: Mapping[str, Any]) -> float:
        value = model.score_payload(payload)
        return NEUTRAL if value is None else value

    return score
