"""Semantic response cache: serve a cached answer to a paraphrase of its question.

Only the last user turn may differ: everything else (system prompt, history, tools,
parameters) must be identical, which `routing.cache_key.context_key` hashes. The last user
turn is embedded with wordllama (its weights ship inside the wheel: nothing is downloaded at
run time) and compared, by cosine similarity, with the route's recent entries that share
the context; the nearest one at or above the route's `threshold` is served.

The index is in process: a bounded ring of the route's most recent entries per replica
(numpy dot products over at most `index_entries` rows, ~0.1 ms). The Redis here (7.0, no
RediSearch) has no vector search, so with Redis the answers are shared across replicas
while each replica's index only knows the entries it stored itself.

Imported only when a route has `mode: semantic` (wordllama pulls in numpy and its model).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway import extras
from routing import cache_key

_MODEL: Any = None
_MODEL_LOCK = threading.Lock()


def embedder() -> Any:
    """The shared wordllama model, loaded once per process (~0.2–0.8 s, at config load)."""
    global _MODEL
    with _MODEL_LOCK:
        if _MODEL is None:
            # Config load reports this first (gateway/config/extras.py); this covers callers
            # that build an index without a checked config.
            extras.require("semantic-cache")
            import wordllama  # type: ignore[import-untyped]

            # wordllama's own lookup of its bundled tokenizer looks in the wrong directory
            # and then tries to download; pointing cache_dir at the package finds the files.
            _MODEL = wordllama.WordLlama.load(
                cache_dir=Path(wordllama.__file__).parent, disable_download=True
            )
        return _MODEL


def embed(texts: list[str]) -> npt.NDArray[np.float32]:
    """Unit-length embeddings, one row per text (dot product = cosine similarity)."""
    vectors: npt.NDArray[np.float32] = embedder().embed(texts, norm=True)
    return vectors


@dataclass(slots=True)
class Neighbour:
    """What a lookup found: the nearest entry's key (None below the threshold), and the
    query's embedding and context, under which a miss's answer is then indexed."""

    key: str | None = None
    similarity: float = 0.0
    vector: npt.NDArray[np.float32] | None = None
    context: int = 0
    text: str = ""


def _context_id(context: str) -> int:
    return int.from_bytes(hashlib.sha256(context.encode()).digest()[:8], "big", signed=True)


class SemanticIndex:
    """The `capacity` most recent entries of one route: embedding, context, key, expiry."""

    def __init__(
        self, capacity: int, threshold: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        model = embedder()
        dim = int(model.embed(["warm-up"], norm=True).shape[1])
        self.threshold = threshold
        self._clock = clock
        self._vectors = np.zeros((capacity, dim), dtype=np.float32)
        self._contexts = np.zeros(capacity, dtype=np.int64)
        # 0: an empty slot; an entry lives until its TTL, like the answer it points to.
        self._expires = np.zeros(capacity, dtype=np.float64)
        self._keys: list[str | None] = [None] * capacity
        self._texts: list[str] = [""] * capacity
        self._next = 0

    def __len__(self) -> int:
        return int(np.count_nonzero(self._expires > self._clock()))

    def nearest(self, namespace: str, scope: str, payload: Mapping[str, Any]) -> Neighbour:
        question = cache_key.last_user_text(payload)
        if question is None:
            return Neighbour()
        text = cache_key.semantic_text(question)
        context = _context_id(cache_key.context_key(namespace, scope, payload))
        vector = embed([text])[0]
        found = Neighbour(vector=vector, context=context, text=text)
        live = (self._contexts == context) & (self._expires > self._clock())
        if not live.any():
            return found
        rows = np.flatnonzero(live)
        similarity = self._vectors[rows] @ vector
        # Best first; the guards may veto the nearest, so look a little further down.
        for at in np.argsort(-similarity)[:8]:
            value = float(similarity[at])
            if value < self.threshold:
                break
            row = int(rows[at])
            if cache_key.may_share_answer(text, self._texts[row]):
                found.key, found.similarity = self._keys[row], value
                break
        return found

    def add(self, query: Neighbour, key: str, ttl_s: int) -> None:
        if query.vector is None:
            return
        slot = self._next
        self._next = (slot + 1) % len(self._keys)
        self._vectors[slot] = query.vector
        self._contexts[slot] = query.context
        self._expires[slot] = self._clock() + ttl_s
        self._keys[slot] = key
        self._texts[slot] = query.text
