"""Provider invoices for the traffic the simulator served, in every format Farebox imports.

``GET /_invoice`` query parameters:

* ``format``: ``openai_usage`` | ``openai_costs`` | ``anthropic_usage`` | ``anthropic_cost`` |
  ``bedrock_cur`` | ``fireworks`` | ``generic`` (see :mod:`gateway.reports.importers`);
* ``provider``: the name written into the generic CSV's ``provider`` column (default ``sim``);
* ``models``: comma-separated base model names to bill (default: every model served), so
  one simulator can play several provider accounts;
* ``drift``: ``model:fraction[,model:fraction…]`` — bill that model's tokens × (1 + fraction)
  (``sim-a:0.044`` is a +4.4 % tokenizer drift);
* ``price``: ``model:input/output[/cached_input[/cache_write]]`` USD per 1M tokens, repeatable;
  models without one are priced from ``config/prices.yaml`` by base name, else billed at $0
  (the dollar-less formats ignore prices);
* ``month``: ``YYYY-MM``, bill only that month's days.

Tokens are counted per model and UTC billing day by :class:`.stats.Stats`, only for answers
whose usage reached the client — what a provider bills. Days are those the simulator was
serving on, or the day pinned with ``POST /_clock?day=YYYY-MM-DD``.

Batch lines (:mod:`.batch_wire`) are billed as separate line items after the live ones, at
:data:`BATCH_DISCOUNT` of the price: ``token_type`` ``batch_<type>`` in the generic CSV,
``"batch": true`` in ``openai_usage``, ``"<model>, batch <label>"`` in ``openai_costs``,
``service_tier`` ``batch`` in the Anthropic reports, ``usage_type``
``BATCH_INFERENCE_USAGE`` for Fireworks, ``…-batch-input-tokens`` usage types in the CUR.
Lines of a batch created with metadata ``sim_bill_live: "true"`` are batch line items billed
at the full live price (:mod:`.batch_billing`), as a provider that forgot the discount would.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from .batch_billing import LIVE_BILLED
from .runtime import STATE

__all__ = ["BATCH_DISCOUNT", "FORMATS", "DayUsage", "InvoiceError", "clock", "invoice", "render"]

FORMATS = (
    "openai_usage",
    "openai_costs",
    "anthropic_usage",
    "anthropic_cost",
    "bedrock_cur",
    "fireworks",
    "generic",
)
_MILLION = Decimal(1_000_000)
#: Batch lines cost this fraction of the live price (OpenAI's and Anthropic's 50 %).
BATCH_DISCOUNT = Decimal("0.5")
_PRICES_FILE = Path(__file__).resolve().parents[1] / "config" / "prices.yaml"


class InvoiceError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class DayUsage:
    model: str
    day: date
    requests: int
    uncached: int
    cached: int
    cache_write: int
    output: int
    batch: bool = False
    live_rate: bool = False  # a batch line billed at the live price (sim_bill_live)


@dataclass(frozen=True, slots=True)
class Rates:
    input: Decimal
    output: Decimal
    cached: Decimal
    cache_write: Decimal

    def cost(self, u: DayUsage) -> dict[str, Decimal]:
        scale = _MILLION / BATCH_DISCOUNT if u.batch and not u.live_rate else _MILLION
        return {
            "uncached": u.uncached * self.input / scale,
            "cached": u.cached * self.cached / scale,
            "cache_write": u.cache_write * self.cache_write / scale,
            "output": u.output * self.output / scale,
        }


_FREE = Rates(Decimal(0), Decimal(0), Decimal(0), Decimal(0))


def _drifted(n: int, drift: Decimal) -> int:
    return int((Decimal(n) * (1 + drift)).to_integral_value(ROUND_HALF_EVEN))


def usage_days(
    daily: list[tuple[str, date, int, dict[str, int]]],
    models: set[str] | None,
    drift: Mapping[str, Decimal],
    month: str | None,
    batch: bool = False,
    live_rate: bool = False,
) -> list[DayUsage]:
    out = []
    for model, day, requests, t in daily:
        if models is not None and model not in models:
            continue
        if month is not None and day.strftime("%Y-%m") != month:
            continue
        d = drift.get(model, Decimal(0))
        cached, write = t["cached"], t["cache_write"]
        out.append(
            DayUsage(
                model=model,
                day=day,
                requests=requests,
                uncached=_drifted(max(t["prompt"] - cached - write, 0), d),
                cached=_drifted(cached, d),
                cache_write=_drifted(write, d),
                output=_drifted(t["completion"], d),
                batch=batch,
                live_rate=live_rate,
            )
        )
    return out


def _epoch(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())


def _iso(day: date) -> str:
    return f"{day.isoformat()}T00:00:00Z"


def _money(value: Decimal) -> str:
    return format(value.quantize(Decimal("1e-10")), "f")


def _by_day(usage: list[DayUsage]) -> dict[date, list[DayUsage]]:
    days: dict[date, list[DayUsage]] = {}
    for u in usage:
        days.setdefault(u.day, []).append(u)
    return dict(sorted(days.items()))


def render(
    fmt: str, usage: list[DayUsage], rates: Mapping[str, Rates], provider: str
) -> tuple[bytes, str]:
    """The invoice body and its content type."""
    if fmt not in FORMATS:
        raise InvoiceError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")

    def cost(u: DayUsage) -> dict[str, Decimal]:
        return rates.get(u.model, _FREE).cost(u)

    if fmt in ("openai_usage", "openai_costs", "anthropic_usage", "anthropic_cost"):
        buckets = []
        for day, group in _by_day(usage).items():
            results: list[dict[str, Any]] = []
            for u in group:
                c = cost(u)
                if fmt == "openai_usage":
                    results.append(
                        {
                            "object": "organization.usage.completions.result",
                            "input_tokens": u.uncached + u.cached + u.cache_write,
                            "input_cached_tokens": u.cached,
                            "input_uncached_tokens": u.uncached,
                            "output_tokens": u.output,
                            "input_audio_tokens": 0,
                            "output_audio_tokens": 0,
                            "num_model_requests": u.requests,
                            "project_id": None,
                            "user_id": None,
                            "api_key_id": None,
                            "model": u.model,
                            "batch": True if u.batch else None,
                        }
                    )
                elif fmt == "openai_costs":
                    for label, key in (
                        ("input", "uncached"),
                        ("cached input", "cached"),
                        ("output", "output"),
                    ):
                        results.append(
                            {
                                "object": "organization.costs.result",
                                "amount": {"value": float(c[key]), "currency": "usd"},
                                "line_item": f"{u.model}, {'batch ' if u.batch else ''}{label}",
                                "project_id": None,
                                "organization_id": "org-sim",
                            }
                        )
                elif fmt == "anthropic_usage":
                    results.append(
                        {
                            "uncached_input_tokens": u.uncached,
                            "cache_creation": {
                                "ephemeral_1h_input_tokens": 0,
                                "ephemeral_5m_input_tokens": u.cache_write,
                            },
                            "cache_read_input_tokens": u.cached,
                            "output_tokens": u.output,
                            "server_tool_use": {"web_search_requests": 0},
                            "api_key_id": None,
                            "workspace_id": None,
                            "model": u.model,
                            "service_tier": "batch" if u.batch else "standard",
                            "context_window": "0-200k",
                        }
                    )
                else:
                    for kind, key in (
                        ("uncached_input_tokens", "uncached"),
                        ("cache_read_input_tokens", "cached"),
                        ("cache_creation.ephemeral_5m_input_tokens", "cache_write"),
                        ("output_tokens", "output"),
                    ):
                        results.append(
                            {
                                "currency": "USD",
                                "amount": _money(c[key] * 100),  # cents, as a string
                                "workspace_id": None,
                                "description": f"{u.model} {kind}",
                                "cost_type": "tokens",
                                "context_window": "0-200k",
                                "model": u.model,
                                "service_tier": "batch" if u.batch else "standard",
                                "token_type": kind,
                            }
                        )
            if fmt.startswith("openai"):
                buckets.append(
                    {
                        "object": "bucket",
                        "start_time": _epoch(day),
                        "end_time": _epoch(day + timedelta(days=1)),
                        "results": results,
                    }
                )
            else:
                buckets.append(
                    {
                        "starting_at": _iso(day),
                        "ending_at": _iso(day + timedelta(days=1)),
                        "results": results,
                    }
                )
        page = (
            {"object": "page", "data": buckets, "has_more": False, "next_page": None}
            if fmt.startswith("openai")
            else {"data": buckets, "has_more": False, "next_page": None}
        )
        return orjson.dumps(page, option=orjson.OPT_INDENT_2), "application/json"

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if fmt == "generic":
        writer.writerow(("provider", "date", "model", "token_type", "tokens", "amount_usd"))
        for u in usage:
            c = cost(u)
            for token_type, n, key in (
                ("input_uncached", u.uncached, "uncached"),
                ("input_cached", u.cached, "cached"),
                ("cache_write", u.cache_write, "cache_write"),
                ("output", u.output, "output"),
            ):
                if n or token_type in ("input_uncached", "output"):
                    amount = _money(c[key]) if u.model in rates else ""
                    kind = f"batch_{token_type}" if u.batch else token_type
                    writer.writerow((provider, u.day.isoformat(), u.model, kind, n, amount))
    elif fmt == "fireworks":
        writer.writerow(
            (
                "start_time",
                "end_time",
                "usage_type",
                "base_model_name",
                "prompt_tokens",
                "completion_tokens",
            )
        )
        for u in usage:
            writer.writerow(
                (
                    _iso(u.day),
                    _iso(u.day + timedelta(days=1)),
                    "BATCH_INFERENCE_USAGE" if u.batch else "TEXT_COMPLETION_INFERENCE_USAGE",
                    u.model,
                    u.uncached + u.cached + u.cache_write,
                    u.output,
                )
            )
    else:  # bedrock_cur
        writer.writerow(
            (
                "identity_line_item_id",
                "bill_billing_period_start_date",
                "line_item_line_item_type",
                "line_item_usage_start_date",
                "line_item_usage_end_date",
                "line_item_product_code",
                "line_item_usage_type",
                "line_item_operation",
                "line_item_resource_id",
                "line_item_usage_amount",
                "line_item_unblended_rate",
                "line_item_unblended_cost",
                "line_item_currency_code",
            )
        )
        n = 0
        for u in usage:
            c = cost(u)
            arn = f"arn:aws:bedrock:us-east-1::foundation-model/{u.model}"
            for suffix, tokens, key in (
                ("input-tokens", u.uncached, "uncached"),
                ("output-tokens", u.output, "output"),
                ("cache-read-input-token-count", u.cached, "cached"),
                ("cache-write-input-token-count", u.cache_write, "cache_write"),
            ):
                if not tokens and suffix.startswith("cache"):
                    continue
                n += 1
                rate = c[key] / tokens if tokens else Decimal(0)
                writer.writerow(
                    (
                        f"sim{n:06d}",
                        _iso(u.day.replace(day=1)),
                        "Usage",
                        _iso(u.day),
                        _iso(u.day + timedelta(days=1)),
                        "AmazonBedrock",
                        f"USE1-{u.model}-{'batch-' if u.batch else ''}{suffix}",
                        "InvokeModelBatchInference" if u.batch else "InvokeModelInference",
                        arn,
                        tokens,
                        _money(rate),
                        _money(c[key]),
                        "USD",
                    )
                )
    return buf.getvalue().encode(), "text/csv"


def _parse_drift(raw: str) -> dict[str, Decimal]:
    out = {}
    for item in filter(None, (p.strip() for p in raw.split(","))):
        model, sep, value = item.rpartition(":")
        try:
            out[model] = Decimal(value)
        except ArithmeticError:
            raise InvoiceError(f"drift {item!r}: expected model:fraction") from None
        if not sep or not model:
            raise InvoiceError(f"drift {item!r}: expected model:fraction")
    return out


def _parse_price(raw: str) -> tuple[str, Rates]:
    model, sep, values = raw.rpartition(":")
    try:
        parts = [Decimal(v) for v in values.split("/")]
    except ArithmeticError:
        parts = []
    if not sep or not model or not 2 <= len(parts) <= 4:
        raise InvoiceError(f"price {raw!r}: expected model:input/output[/cached[/cache_write]]")
    cached = parts[2] if len(parts) > 2 else parts[0]
    write = parts[3] if len(parts) > 3 else parts[0]
    return model, Rates(parts[0], parts[1], cached, write)


def _yaml_rates(models: set[str]) -> dict[str, Rates]:
    """Latest prices.yaml entry per model, read without the gateway's price machinery."""
    import yaml

    try:
        doc = yaml.safe_load(_PRICES_FILE.read_text(encoding="utf-8")) or {}
    except OSError:
        return {}
    out = {}
    for model in models:
        rows = (doc.get("models") or {}).get(model)
        if not rows:
            continue
        row = rows[-1]

        def rate(key: str, fallback: str = "input", row: dict[str, Any] = row) -> Decimal:
            return Decimal(repr(float(row.get(key, row.get(fallback, 0)))))

        out[model] = Rates(rate("input"), rate("output"), rate("cached_input"), rate("cache_write"))
    return out


async def invoice(request: web.Request) -> web.Response:
    state = request.app[STATE]
    q = request.query
    try:
        fmt = q.get("format", "generic")
        models = {m for m in q.get("models", "").split(",") if m} or None
        drift = _parse_drift(q.get("drift", ""))
        month = q.get("month") or None
        usage = usage_days(state.stats.daily(), models, drift, month)
        billed = request.app.get(LIVE_BILLED)
        batch = state.stats.batch_daily()
        live: list[tuple[str, date, int, dict[str, int]]] = []
        if billed is not None:
            batch, live = billed.split(batch)
        usage += usage_days(batch, models, drift, month, batch=True)
        usage += usage_days(live, models, drift, month, batch=True, live_rate=True)
        rates = _yaml_rates({u.model for u in usage})
        for raw in q.getall("price", []):
            model, r = _parse_price(raw)
            rates[model] = r
        body, content_type = render(fmt, usage, rates, q.get("provider", "sim"))
    except InvoiceError as exc:
        return web.json_response({"error": {"message": str(exc)}}, status=400)
    return web.Response(body=body, content_type=content_type)


async def clock(request: web.Request) -> web.Response:
    """``POST /_clock?day=YYYY-MM-DD`` pins the billing day; ``day=`` unpins it."""
    stats = request.app[STATE].stats
    raw = request.query.get("day", "")
    try:
        stats.billing_day = date.fromisoformat(raw) if raw else None
    except ValueError:
        return web.json_response({"error": {"message": f"bad day {raw!r}"}}, status=400)
    return web.json_response({"day": stats.today().isoformat(), "pinned": bool(raw)})
