"""Bearer-key authentication (first cut): keys from FAREBOX_MASTER_KEY and the YAML.

Only SHA-256 digests are kept in memory, so a heap dump or an error message never shows a key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Principal:
    key_name: str


ANONYMOUS = Principal(key_name="anonymous")


def digest(key: str | bytes) -> bytes:
    raw = key.encode() if isinstance(key, str) else key
    return hashlib.sha256(raw).digest()


class KeyStore:
    __slots__ = ("_by_digest", "disabled")

    def __init__(self, keys: Iterable[tuple[str, str]], *, disabled: bool = False) -> None:
        self.disabled = disabled
        self._by_digest = {digest(key): Principal(name) for name, key in keys}

    def __len__(self) -> int:
        return len(self._by_digest)

    def authenticate(
        self, authorization: bytes | None, api_key: bytes | None = None
    ) -> Principal | None:
        """Principal for an `Authorization: Bearer …` (or `x-api-key`) header, else None.

        Dict lookup by digest rather than comparing secrets directly, so lookup time does
        not depend on how much of a guessed key matches.
        """
        if self.disabled:
            return ANONYMOUS
        token: bytes | None = None
        if authorization is not None:
            scheme, _, rest = authorization.strip().partition(b" ")
            if scheme.lower() == b"bearer":
                token = rest.strip()
        elif api_key is not None:
            token = api_key.strip()
        if not token:
            return None
        return self._by_digest.get(digest(token))
