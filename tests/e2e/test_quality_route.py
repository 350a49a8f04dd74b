"""strategy quality end to end with the shipped router model: the share of strong calls
holds at the route's target, the prompts sent strong are the ones the router scores as
harder, and the ledger records each decision."""

from __future__ import annotations

import csv
from pathlib import Path

import openai
import pytest

from gateway.router.model_io import default_model
from tests.conftest import sqlite_settings
from tests.gateway_harness import config_from_yaml, running_gateway
from tests.ledger_reads import sql_rows
from tests.simulator import running_simulator

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "router" / "mmlu"
CONFIG = """
auth: none
providers:
  sim: {kind: serverless, protocol: openai, api_base: "${SIM}/v1"}
deployments:
  cheap: {provider: sim, model: "sim-cheap::tokens=3", price: {input: 0.2, output: 0.6}}
  strong: {provider: sim, model: "sim-strong::tokens=3", price: {input: 3.0, output: 15.0}}
routes:
  triage: {strategy: quality, targets: [cheap, strong], strong_share: 0.3}
"""


def prompts(n: int) -> list[str]:
    out: list[str] = []
    for path in sorted(DATA.glob("mmlu_*.csv")):
        with path.open(newline="", encoding="utf-8") as handle:
            out += [row["prompt"] for row, _ in zip(csv.DictReader(handle), range(8), strict=False)]
    return out[:n]


@pytest.mark.skipif(not DATA.is_dir(), reason="the shared router data is not beside the repo")
def test_quality_routing_holds_its_share_and_sends_the_hard_ones_strong(tmp_path: Path) -> None:
    texts = prompts(300)
    assert len(texts) == 300
    model = default_model()
    routed: list[tuple[float, str]] = []
    with running_simulator() as sim:
        settings = sqlite_settings(tmp_path)
        with running_gateway(config_from_yaml(CONFIG, {"SIM": sim}), settings) as gw:
            client = openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0)
            for text in texts:
                raw = client.chat.completions.with_raw_response.create(
                    model="triage", messages=[{"role": "user", "content": text}]
                )
                assert raw.headers["x-farebox-route-reason"].startswith("quality: ")
                routed.append((model.score(text), raw.headers["x-farebox-deployment"]))
    warm = routed[60:]  # the share-keeping threshold needs some traffic to place itself
    strong = [score for score, dep in warm if dep == "strong"]
    cheap = [score for score, dep in warm if dep == "cheap"]
    share = len(strong) / len(warm)
    print(
        f"\nstrong share {share:.0%}; mean router score strong {sum(strong) / len(strong):.3f}"
        f" vs cheap {sum(cheap) / len(cheap):.3f}"
    )
    assert 0.2 <= share <= 0.4
    assert min(strong) >= max(cheap) - 0.05  # a threshold, give or take its drift
    decisions = sql_rows(settings.database_url, "SELECT decision FROM requests")
    assert len(decisions) == 300 and all(d.startswith("quality: ") for (d,) in decisions)
