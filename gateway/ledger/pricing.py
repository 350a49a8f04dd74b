"""Which price applies to an attempt: deployment override, prices.yaml, then litellm's map.

Precedence for token-priced (serverless, closed_api) deployments:

1. the deployment's `price:` in the routing YAML (no dates: it is the operator's word now);
2. `prices.yaml` keyed by the deployment id, then keyed by the upstream model name — the
   latest entry with `effective_from` ≤ the attempt's UTC date wins; a key whose entries all
   start later contributes nothing and the search goes on;
3. litellm's bundled price map (see :class:`LitellmPriceMap` for the matching rules).

Batch rates (:meth:`PriceBook.batch_price_for`, for lines billed through a provider's batch
API), first found wins:

1. explicit rates beside the live price that applies: the deployment's `price: {batch: …}`,
   or the `batch:` of the prices.yaml entry the live price came from;
2. the provider's `batch_discount` (fraction off) applied to the live price;
3. litellm's `*_cost_per_token_batches` fields of the entry the live price would come from.

A batch price's `version` is the live one's with a `+batch…` suffix, so a ledger row shows
which rate it was charged.

Dedicated deployments get zero token prices: their GPU hours are charged in the reports, at
the provider's `hourly_usd` or else that of the prices.yaml entry for the deployment id.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.ledger.litellm_prices import LitellmPriceMap as LitellmPriceMap
from gateway.ledger.litellm_prices import bundled_litellm_price_map as bundled_litellm_price_map
from gateway.ledger.litellm_prices import litellm_prefix as litellm_prefix
from gateway.ledger.litellm_prices import suffixed
from gateway.ledger.unit_prices import UnitRateFields, unit_prices
from gateway.runtime.yaml_loader import ConfigError, ConfigIssue, LocatedDocument, load_yaml
from routing.cost import TokenPrice


class _PriceFields(Protocol):
    """A deployment's `price:` in the routing YAML (gateway.config.routes.Price): read by
    shape, so the ledger needs nothing from the config package above it."""

    @property
    def input(self) -> float: ...
    @property
    def output(self) -> float: ...
    @property
    def cached_input(self) -> float | None: ...
    @property
    def cache_write(self) -> float | None: ...

    # Optional `batch:` (gateway.config.routes.BatchPrice) is read with getattr: not every
    # caller's config has it.


class _DeploymentFields(Protocol):
    @property
    def provider(self) -> str: ...
    @property
    def price(self) -> _PriceFields | None: ...


class _ProviderFields(Protocol):
    @property
    def protocol(self) -> str: ...
    @property
    def api_base(self) -> str | None: ...
    @property
    def hourly_usd(self) -> float | None: ...


class PricedConfig(Protocol):
    """What the price book reads of a loaded config (gateway.config.schema.GatewayConfig)."""

    @property
    def deployments(self) -> Mapping[str, _DeploymentFields]: ...
    @property
    def providers(self) -> Mapping[str, _ProviderFields]: ...


log = logging.getLogger(__name__)

DEFAULT_PRICES_PATH = Path("config/prices.yaml")
_REPO_PRICES_PATH = Path(__file__).resolve().parents[2] / "config" / "prices.yaml"
_ZERO = Decimal(0)
# The memo is keyed by day, so it only grows with deployments × days served; the cap just
# bounds a process that is fed many distinct upstream names.
_MEMO_LIMIT = 16_384

Rate = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _BatchRow(_Strict):
    input: Rate
    output: Rate
    cached_input: Rate | None = None
    cache_write: Rate | None = None


class _Row(UnitRateFields, _Strict):
    effective_from: date
    input: Rate
    output: Rate
    cached_input: Rate | None = None
    cache_write: Rate | None = None
    hourly_usd: Rate | None = None
    batch: _BatchRow | None = None


class _PricesFile(_Strict):
    models: dict[str, list[_Row]] = Field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DatedPrice:
    effective_from: date
    price: TokenPrice
    batch: TokenPrice | None = None  # the entry's `batch:` rates, if it states them


PriceTable = Mapping[str, tuple[DatedPrice, ...]]


def _dec(value: float) -> Decimal:
    # repr() of a float is the shortest string that round-trips, so 1.25 stays 1.25 exactly.
    return Decimal(repr(value))


def _opt(value: float | None) -> Decimal | None:
    return None if value is None else _dec(value)


def parse_prices(text: str, file: str) -> dict[str, tuple[DatedPrice, ...]]:
    """Validate a prices.yaml document; raise ConfigError naming file, line and key path."""
    doc = load_yaml(text, file, {})
    if not isinstance(doc.data, dict):
        raise ConfigError([doc.issue((), "the top level must be a mapping with `models:`")])
    try:
        parsed = _PricesFile.model_validate(doc.data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, doc)) from None
    issues: list[ConfigIssue] = []
    table: dict[str, tuple[DatedPrice, ...]] = {}
    name = Path(file).name
    for key, rows in parsed.models.items():
        if not rows:
            issues.append(doc.issue(("models", key), "needs at least one dated entry"))
            continue
        for i in range(1, len(rows)):
            before, here = rows[i - 1].effective_from, rows[i].effective_from
            if here <= before:
                problem = "duplicate" if here == before else "out of date order (oldest first)"
                where = ("models", key, i, "effective_from")
                issues.append(doc.issue(where, f"{problem}: {here} after {before}"))
        table[key] = tuple(
            DatedPrice(
                row.effective_from,
                _price(f"{name}:{key}:{row.effective_from}", row),
                None
                if row.batch is None
                else _price(suffixed(f"{name}:{key}:{row.effective_from}", "+batch"), row.batch),
            )
            for row in rows
        )
    if issues:
        raise ConfigError(issues)
    return table


def _explain(exc: ValidationError, doc: LocatedDocument) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        if err["type"] == "extra_forbidden":
            message = f"unknown key {loc[-1]!r}"
        elif err["type"] == "missing":
            message = "required key is missing"
        else:
            message = err["msg"].removeprefix("Value error, ")
            if isinstance(err.get("input"), str | int | float) and len(repr(err["input"])) < 60:
                message += f" (got {err['input']!r})"
        issue = doc.issue(loc, message)
        if issue not in issues:
            issues.append(issue)
    return issues


def load_prices(path: Path) -> dict[str, tuple[DatedPrice, ...]]:
    """A missing file is an empty table: prices.yaml is optional, litellm's map backs it up."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigIssue(str(path), None, "", f"cannot read: {exc}")]) from None
    return parse_prices(text, str(path))


# Substrings of an api_base host or provider name → litellm's provider prefix; first match wins
# (so "azure" comes before "openai" for *.openai.azure.com).
@dataclass(frozen=True, slots=True)
class _Deployment:
    provider: str
    hourly_usd: Decimal | None
    litellm_prefix: str | None
    batch_discount: Decimal | None = None  # the provider's, a fraction off the live price


class PriceBook:
    """Answers `price_for` in well under a microsecond once a (deployment, day) is memoized."""

    def __init__(
        self,
        *,
        overrides: Mapping[str, TokenPrice] | None = None,
        table: PriceTable | None = None,
        deployments: Mapping[str, _Deployment] | None = None,
        litellm: LitellmPriceMap | None = None,
        batch_overrides: Mapping[str, TokenPrice] | None = None,
    ) -> None:
        self._overrides = dict(overrides or {})
        self._batch_overrides = dict(batch_overrides or {})
        self._batch_memo: dict[tuple[str, str, date], TokenPrice | None] = {}
        self._table = dict(table or {})
        self._dates = {k: [e.effective_from for e in v] for k, v in self._table.items()}
        self._deployments = dict(deployments or {})
        self._litellm = litellm if litellm is not None else LitellmPriceMap()
        self._memo: dict[tuple[str, str, str, date], TokenPrice | None] = {}

    @classmethod
    def from_config(
        cls, config: PricedConfig, table: PriceTable, litellm: LitellmPriceMap | None = None
    ) -> PriceBook:
        overrides: dict[str, TokenPrice] = {}
        batch_overrides: dict[str, TokenPrice] = {}
        deployments: dict[str, _Deployment] = {}
        for dep_id, dep in config.deployments.items():
            if dep.price is not None:
                overrides[dep_id] = _price(f"deployment-override:{dep_id}", dep.price)
                batch = getattr(dep.price, "batch", None)
                if batch is not None:
                    version = suffixed(f"deployment-override:{dep_id}", "+batch")
                    batch_overrides[dep_id] = _price(version, batch)
            provider = config.providers.get(dep.provider)
            if provider is None:
                continue
            deployments[dep_id] = _Deployment(
                provider=dep.provider,
                hourly_usd=_opt(provider.hourly_usd),
                litellm_prefix=litellm_prefix(dep.provider, provider.protocol, provider.api_base),
                batch_discount=_opt(getattr(provider, "batch_discount", None)),
            )
        return cls(
            overrides=overrides,
            table=table,
            deployments=deployments,
            litellm=litellm,
            batch_overrides=batch_overrides,
        )

    def price_for(
        self, deployment_id: str, upstream_model: str, provider_kind: str, at: datetime
    ) -> TokenPrice | None:
        day = _utc_day(at)
        key = (deployment_id, upstream_model, provider_kind, day)
        try:  # not `in` + `[]`: another thread may clear the memo between the two
            return self._memo[key]
        except KeyError:
            pass
        price: TokenPrice | None
        if provider_kind == "dedicated":
            price = self._dedicated(deployment_id, day)
        else:
            price = self._token_price(deployment_id, upstream_model, day)
        if len(self._memo) >= _MEMO_LIMIT:
            self._memo.clear()
        self._memo[key] = price
        return price

    def batch_price_for(
        self, deployment_id: str, upstream_model: str, provider_kind: str, at: datetime
    ) -> TokenPrice | None:
        """The rate of the provider's batch API for an attempt, or None when no batch rate is
        known (the caller then charges :meth:`price_for`). Dedicated deployments: None (their
        tokens cost nothing either way)."""
        if provider_kind == "dedicated":
            return None
        day = _utc_day(at)
        key = (deployment_id, upstream_model, day)
        try:
            return self._batch_memo[key]
        except KeyError:
            pass
        price = self._batch_price(deployment_id, upstream_model, provider_kind, day)
        if len(self._batch_memo) >= _MEMO_LIMIT:
            self._batch_memo.clear()
        self._batch_memo[key] = price
        return price

    def _batch_price(
        self, deployment_id: str, upstream_model: str, provider_kind: str, day: date
    ) -> TokenPrice | None:
        # 1. Explicit rates beside the live price that applies (never from a source below it:
        # a batch rate is only meaningful next to the live rate it discounts).
        if deployment_id in self._overrides:
            explicit = self._batch_overrides.get(deployment_id)
        else:
            row = self._dated_row_for(deployment_id, upstream_model, day)
            explicit = None if row is None else row.batch
        if explicit is not None:
            return explicit
        dep = self._deployments.get(deployment_id)
        # 2. The provider's discount off the live price.
        if dep is not None and dep.batch_discount is not None:
            at = datetime(day.year, day.month, day.day, tzinfo=UTC)
            live = self.price_for(deployment_id, upstream_model, provider_kind, at)
            if live is None:
                return None
            return _discounted(live, dep.batch_discount)
        # 3. litellm's batch rates.
        return self._litellm.lookup_batch(upstream_model, dep.litellm_prefix if dep else None)

    def _dated_row_for(
        self, deployment_id: str, upstream_model: str, day: date
    ) -> DatedPrice | None:
        for key in dict.fromkeys(
            (deployment_id, upstream_model, upstream_model.partition("::")[0])
        ):
            dates = self._dates.get(key)
            if dates:
                i = bisect.bisect_right(dates, day) - 1
                if i >= 0:
                    return self._table[key][i]
        return None

    def _token_price(self, deployment_id: str, upstream_model: str, day: date) -> TokenPrice | None:
        override = self._overrides.get(deployment_id)
        if override is not None:
            return override
        for key in dict.fromkeys(
            (deployment_id, upstream_model, upstream_model.partition("::")[0])
        ):
            dated = self._dated(key, day)
            if dated is not None:
                return dated
        dep = self._deployments.get(deployment_id)
        return self._litellm.lookup(upstream_model, dep.litellm_prefix if dep else None)

    def _dated(self, key: str, day: date) -> TokenPrice | None:
        dates = self._dates.get(key)
        if not dates:
            return None
        i = bisect.bisect_right(dates, day) - 1
        return self._table[key][i].price if i >= 0 else None

    def _dedicated(self, deployment_id: str, day: date) -> TokenPrice:
        dep = self._deployments.get(deployment_id)
        hourly: Decimal | None = None
        version = "dedicated"
        if dep is not None and dep.hourly_usd is not None:
            hourly, version = dep.hourly_usd, f"dedicated:{dep.provider}"
        else:
            dated = self._dated(deployment_id, day)
            if dated is not None and dated.hourly_usd is not None:
                hourly, version = dated.hourly_usd, dated.version
        return TokenPrice.of(input=_ZERO, output=_ZERO, hourly_usd=hourly, version=version)


# attempts.price_version is a 64-character column: a batch version keeps its suffix whole and
# gives up the end of a long base (a litellm key under a provider prefix can be 60+ chars).
def _discounted(live: TokenPrice, discount: Decimal) -> TokenPrice:
    keep = 1 - discount
    return TokenPrice(
        input=live.input * keep,
        output=live.output * keep,
        cached_input=live.cached_input * keep,
        cache_write=live.cache_write * keep,
        version=suffixed(live.version, f"+batch-{(discount * 100).normalize():f}%"),
        hourly_usd=live.hourly_usd,
    )


def _price(version: str, row: _Row | _BatchRow | _PriceFields) -> TokenPrice:
    return TokenPrice.of(
        input=_dec(row.input),
        output=_dec(row.output),
        cached_input=_opt(row.cached_input),
        cache_write=_opt(row.cache_write),
        hourly_usd=_opt(row.hourly_usd) if isinstance(row, _Row) else None,
        version=version,
        units=unit_prices(row),
    )


def _utc_day(at: datetime) -> date:
    # Naive datetimes are taken as UTC, like every timestamp in the ledger.
    if at.tzinfo is None or at.tzinfo is UTC:
        return at.date()
    return at.astimezone(UTC).date()


def load_price_book(
    config: PricedConfig,
    prices_path: Path | None = None,
    litellm: LitellmPriceMap | None = None,
) -> PriceBook:
    """Build the book for a loaded config.

    Without `prices_path`, `config/prices.yaml` under the working directory is used, else the
    copy in the source tree; a missing file is an empty table. A malformed one raises
    ConfigError (file:line), like the routing YAML.
    """
    if prices_path is None:
        prices_path = DEFAULT_PRICES_PATH if DEFAULT_PRICES_PATH.is_file() else _REPO_PRICES_PATH
    elif not prices_path.is_file():
        log.warning("prices file %s not found; using overrides and litellm's map", prices_path)
    return PriceBook.from_config(config, load_prices(prices_path), litellm)
