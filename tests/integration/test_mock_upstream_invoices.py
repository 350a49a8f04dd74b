"""The simulator bills what it served: `/_invoice` per format agrees with `/_stats`, drift
applies to one model only, and the billing day can be pinned with `/_clock`."""

from __future__ import annotations

import csv
import io
import json
import urllib.error
import urllib.request
from decimal import Decimal

import openai
import pytest

from gateway.reports.importers import parse_bytes
from tests.simulator import running_simulator, simulator_stats


def _post(url: str) -> dict[str, object]:
    with urllib.request.urlopen(urllib.request.Request(url, method="POST")) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url) as resp:
        return bytes(resp.read())


def test_invoices_match_stats_and_drift_one_model() -> None:
    with running_simulator() as sim:
        client = openai.OpenAI(base_url=f"{sim}/v1", api_key="x", max_retries=0)
        for day in ("2026-11-02", "2026-11-09"):
            assert _post(f"{sim}/_clock?day={day}") == {"day": day, "pinned": True}
            for i in range(3):
                messages = [{"role": "user", "content": "count these words " * (i + 1)}]
                client.chat.completions.create(model="sim-a::cached=2,tokens=7", messages=messages)  # type: ignore[arg-type]
                client.chat.completions.create(model="sim-b::tokens=5", messages=messages)  # type: ignore[arg-type]
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(
                model="sim-x::status=500",
                messages=[{"role": "user", "content": "x"}],  # type: ignore[list-item]
            )
        assert _post(f"{sim}/_clock?day=")["pinned"] is False

        stats = simulator_stats(sim)["tokens"]
        rows = list(csv.DictReader(io.StringIO(_get(f"{sim}/_invoice?format=generic").decode())))
        billed: dict[tuple[str, str], int] = {}
        for row in rows:
            key = (row["model"], row["token_type"])
            billed[key] = billed.get(key, 0) + int(row["tokens"])
        for model in ("sim-a", "sim-b"):
            t = stats[model]
            assert billed[(model, "input_uncached")] == t["prompt"] - t["cached"]
            assert billed.get((model, "input_cached"), 0) == t["cached"]
            assert billed[(model, "output")] == t["completion"]
        assert {r["date"] for r in rows} == {"2026-11-02", "2026-11-09"}
        assert "sim-x" not in {r["model"] for r in rows}  # a 500 is not billed

        drifted = parse_bytes(
            "sim", _get(f"{sim}/_invoice?format=openai_usage&drift=sim-a:0.5"), "u.json"
        )
        plain = parse_bytes("sim", _get(f"{sim}/_invoice?format=openai_usage"), "u.json")

        def total(f: object, model: str) -> Decimal:
            return sum(
                (x.tokens or Decimal(0) for x in f.lines if x.model == model),  # type: ignore[attr-defined]
                Decimal(0),
            )

        assert total(drifted, "sim-b") == total(plain, "sim-b")
        assert abs(total(drifted, "sim-a") / total(plain, "sim-a") - Decimal("1.5")) < Decimal(
            "0.05"
        )
        # Requests per model and day, for the unmetered-retries check.
        assert sum(x.requests or 0 for x in plain.lines if x.model == "sim-a") == 6

        only_b = parse_bytes(
            "sim", _get(f"{sim}/_invoice?format=bedrock_cur&models=sim-b&price=sim-b:1/2"), "c.csv"
        )
        assert {x.model for x in only_b.lines} == {"sim-b"}
        assert all(x.amount_usd is not None and x.amount_usd > 0 for x in only_b.lines)
        assert _get(f"{sim}/_invoice?format=generic&month=2026-12").count(b"\n") == 1

        for bad in ("format=pdf", "drift=sim-a", "price=sim-a:1"):
            with pytest.raises(urllib.error.HTTPError) as err:
                _get(f"{sim}/_invoice?{bad}")
            assert err.value.code == 400
