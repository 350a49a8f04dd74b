"""litellm's bundled price map, as the price book's last source of token prices.

Which entry a deployment maps to: see :class:`LitellmPriceMap`. Read lazily from litellm's
package data (never importing litellm itself), once per process.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import threading
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.ledger.unit_prices import litellm_unit_prices
from routing.cost import MILLION, TokenPrice

# The price book's logger: the messages are the price book's, wherever the code sits.
log = logging.getLogger("gateway.ledger.pricing")

_ZERO = Decimal(0)


_VERSION_MAX = 64


def suffixed(version: str, suffix: str) -> str:
    if not suffix:
        return version
    return version[: _VERSION_MAX - len(suffix)] + suffix


_SAME_NAME = "deepinfra groq mistral deepseek nebius hyperbolic cerebras sambanova novita"
_HOST_PREFIXES = {"together": "together_ai", "fireworks": "fireworks_ai", "x.ai": "xai"} | {
    name: name
    for name in (*_SAME_NAME.split(), "openrouter", "perplexity", "anthropic", "azure", "openai")
}


def litellm_prefix(provider_name: str, protocol: str, api_base: str | None) -> str | None:
    """The litellm provider a deployment's prices are filed under, if we can tell."""
    if protocol != "openai":
        return protocol  # non-OpenAI protocols are named by their litellm provider already
    host = (urlsplit(api_base or "").hostname or "").lower()
    for hint in (host, provider_name.lower()):
        for needle, prefix in _HOST_PREFIXES.items():
            if needle in hint:
                return prefix
    return None


class LitellmPriceMap:
    """litellm's bundled `model_prices_and_context_window_backup.json`, read without litellm.

    Importing litellm costs seconds and hundreds of MB, so the JSON is read directly, once, on
    the first lookup. Candidate keys, each tried exactly and then case-insensitively:

    1. `<prefix>/<model>` where the prefix comes from the deployment's provider (protocol, or
       a known api_base host such as api.together.xyz → `together_ai`);
    2. `<model>` as is (first-party names like `gpt-4o-mini`, `claude-…`);
    3. `<model>` without a leading litellm provider prefix (`openai/gpt-4o` → `gpt-4o`).

    An org/model name on an unknown host (`deepseek-ai/DeepSeek-V3` at some private endpoint)
    is deliberately NOT matched to another host's entry: hosts price the same weights
    differently, and an unknown price (None) is honest where a borrowed one is not. If no
    candidate matches and the name carries a simulator `::directives` suffix, the base name
    is tried. Entries without a numeric `input_cost_per_token` are skipped.
    """

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._entries: dict[str, Mapping[str, Any]] | None = None
        self._lower: dict[str, str] = {}
        self._providers: frozenset[str] = frozenset()
        self._version = "unknown"

    def _load(self) -> dict[str, Mapping[str, Any]]:
        with self._lock:
            if self._entries is not None:
                return self._entries
            entries: dict[str, Mapping[str, Any]] = {}
            path = self._path or bundled_litellm_price_map()
            try:
                if path is not None:
                    raw = json.loads(path.read_bytes())
                    entries = {k: v for k, v in raw.items() if isinstance(v, Mapping)}
                self._version = importlib.metadata.version("litellm")
            except (OSError, ValueError, importlib.metadata.PackageNotFoundError) as exc:
                log.warning("litellm price map unavailable (%s): %s", path, exc)
            entries.pop("sample_spec", None)
            self._lower = {k.lower(): k for k in entries}
            self._providers = frozenset(
                str(v["litellm_provider"]) for v in entries.values() if "litellm_provider" in v
            )
            self._entries = entries
            return entries

    def lookup(self, model: str, prefix: str | None = None) -> TokenPrice | None:
        found = self._find(model, prefix)
        return None if found is None else found[1]

    def lookup_batch(self, model: str, prefix: str | None = None) -> TokenPrice | None:
        """The batch rates (`*_cost_per_token_batches`) of the entry :meth:`lookup` answers
        from; None when that entry states none (another key's are never borrowed)."""
        found = self._find(model, prefix)
        if found is None:
            return None
        key = found[0]
        entries = self._entries or {}
        return self._price(key, entries[key], suffix="_batches")

    def _find(self, model: str, prefix: str | None) -> tuple[str, TokenPrice] | None:
        entries = self._entries if self._entries is not None else self._load()
        for name in dict.fromkeys((model, model.partition("::")[0])):
            for key in self._candidates(name, prefix):
                found = entries.get(key)
                if found is None and key.lower() in self._lower:
                    key = self._lower[key.lower()]
                    found = entries[key]
                price = self._price(key, found) if found is not None else None
                if price is not None:
                    return key, price
        return None

    def _candidates(self, model: str, prefix: str | None) -> list[str]:
        out = []
        if prefix and not model.startswith(prefix + "/"):
            out.append(f"{prefix}/{model}")
        out.append(model)
        head, sep, rest = model.partition("/")
        if sep and rest and head in self._providers:
            out.append(rest)
        return out

    def _price(self, key: str, entry: Mapping[str, Any], suffix: str = "") -> TokenPrice | None:
        def per_million(field: str) -> Decimal | None:
            value = entry.get(field + suffix)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                return None
            return (Decimal(repr(value)) * MILLION).normalize()

        input_rate = per_million("input_cost_per_token")
        output_rate = per_million("output_cost_per_token")
        if output_rate is None and entry.get("mode") in ("embedding", "rerank"):
            output_rate = _ZERO
        units = None if suffix else litellm_unit_prices(entry)
        if units is not None:  # whisper-1, tts-1, rerank-english-v3.0: priced per unit only
            input_rate = _ZERO if input_rate is None else input_rate
            output_rate = _ZERO if output_rate is None else output_rate
        if input_rate is None or output_rate is None:
            return None
        return TokenPrice.of(
            input=input_rate,
            output=output_rate,
            cached_input=per_million("cache_read_input_token_cost"),
            cache_write=per_million("cache_creation_input_token_cost"),
            units=units,
            version=suffixed(f"litellm:{self._version}:{key}", "+batch" if suffix else ""),
        )


def bundled_litellm_price_map() -> Path | None:
    spec = importlib.util.find_spec("litellm")  # locates the package without importing it
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "model_prices_and_context_window_backup.json"
    return path if path.is_file() else None
