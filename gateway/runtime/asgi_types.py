"""The ASGI shapes every layer may name: a scope, a header list, and a header lookup.

Kept below the domains so the response cache (below the API) can read request headers
without importing the HTTP edge.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Headers = list[tuple[bytes, bytes]]


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None
