"""The disk spool with tuple rows: a batch comes back exactly as it went in (decimals,
timestamps with their offset, every optional field), and a spool line written by an older
version (rows as objects, without the fields added since) still replays."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

from gateway.ledger.spool import Spool
from gateway.ledger_rows import AttemptRow, RequestRow
from tests.ledger_rows import attempt_row, request_row

LOCAL = timezone(timedelta(hours=-5))


def test_a_batch_comes_back_exactly(tmp_path: Path) -> None:
    request = request_row(
        "r1",
        received_at=datetime(2025, 3, 1, 8, 0, 0, 654321, tzinfo=LOCAL),
        cost_usd=Decimal("0.0000012345"),
        team="blue",
        consensus="agree",
        workflow_id="wf",
        batch_id="batch_1",
    )
    attempt = attempt_row(
        "a1",
        "r1",
        cost_usd=Decimal("0"),
        saved_usd=Decimal("0.0100000000"),
        units=Decimal("2.500000"),
        unit="image",
        gate_outcome="pass",
        drill_id="d1",
    )
    spool = Spool(tmp_path)
    spool.append([request], [attempt])
    spool.append([], [attempt._replace(id="a2", cost_usd=None)])
    spool.seal()
    (segment,) = spool.pending()
    batches = list(Spool.read(segment))
    assert batches == [([request], [attempt]), ([], [attempt._replace(id="a2", cost_usd=None)])]
    got = batches[0][0][0]
    assert type(got) is RequestRow and type(batches[0][1][0]) is AttemptRow
    assert got.received_at == request.received_at and got.received_at.utcoffset() is not None


def test_a_line_from_an_older_version_replays(tmp_path: Path) -> None:
    # As the dataclass rows were spooled, before units/unit/batch_id existed.
    line = (
        b'{"r":[{"id":"r1","received_at":"2025-01-15T12:00:00+00:00","key_id":"k1",'
        b'"route":"chat","requested_model":"chat","endpoint":"chat/completions",'
        b'"workload":null,"stream":false,"final_status":200,"error_class":null,'
        b'"final_deployment":"fast@sim","attempts":1,"input_uncached_tokens":3,'
        b'"cached_read_tokens":0,"cache_write_tokens":0,"output_tokens":2,'
        b'"reasoning_tokens":0,"cost_usd":"0.0000020000","latency_ms":10.0,"ttft_ms":null,'
        b'"gate_outcome":null,"decision":null,"team":null,"segment":null,"consensus":null}],'
        b'"a":[{"id":"a1","request_id":"r1","attempt_no":1,"role":"primary",'
        b'"deployment":"fast@sim","provider":"sim","provider_kind":"serverless",'
        b'"upstream_model":"m-fast","provider_request_id":null,'
        b'"started_at":"2025-01-15T12:00:00+00:00","ttft_ms":null,"latency_ms":10.0,'
        b'"http_status":200,"error_class":null,"input_uncached_tokens":3,'
        b'"cached_read_tokens":0,"cache_write_tokens":0,"output_tokens":2,'
        b'"reasoning_tokens":0,"token_source":"provider","cost_usd":"0.0000020000",'
        b'"price_version":null,"gate_outcome":null,"drill_id":null,"saved_usd":null}]}\n'
    )
    segment = tmp_path / "ledger-20250115T120000000000-1-000001.jsonl"
    segment.write_bytes(line)
    ((requests, attempts),) = list(Spool.read(segment))
    t0 = datetime(2025, 1, 15, 12, 0, tzinfo=UTC)
    cost = Decimal("0.0000020000")
    assert requests == [
        request_row("r1", input_uncached_tokens=3, output_tokens=2, cost_usd=cost, received_at=t0)
    ]
    assert attempts == [
        attempt_row("a1", "r1", input_uncached_tokens=3, output_tokens=2, cost_usd=cost)
    ]
    assert attempts[0].units is None and requests[0].batch_id is None
