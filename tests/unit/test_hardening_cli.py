"""`farebox serve` hands uvicorn the hardened protocol and limits; `config check` shows
which routes log payloads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import uvicorn
from typer.testing import CliRunner

from gateway.cli import main as cli
from gateway.cli import serve as serving
from gateway.config.loading import parse_config
from gateway.serving import server as server_module
from gateway.serving.protocol import LeanHttpProtocol
from gateway.settings import Settings

YAML = """
auth: none
server: {max_header_bytes: 10000}
providers:
  p: {kind: serverless, protocol: openai, api_base: "http://127.0.0.1:9/v1"}
deployments:
  d@p: {provider: p, model: m}
routes:
  quiet: {targets: [d@p]}
  audited: {targets: [d@p], log_payloads: true}
"""


def test_serve_uses_the_bounded_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, uvicorn.Config] = {}

    class NotServing:
        """Stands in for the server: records the uvicorn config `_serve` built."""

        started = True

        def __init__(self, config: uvicorn.Config) -> None:
            seen["config"] = config

        def run(self, sockets: Any = None) -> None:
            for sock in sockets or ():
                sock.close()

    monkeypatch.setattr(server_module, "GatewayServer", NotServing)
    config = parse_config(YAML, "t.yaml", {})
    settings = Settings(master_key=None, metrics_port=0)
    serving._serve(settings, config, Path("t.yaml"), "127.0.0.1", 0, 1)
    built = seen["config"]
    assert built.http is LeanHttpProtocol
    assert built.h11_max_incomplete_event_size == 10000 + 16 * 1024
    assert built.timeout_keep_alive == 30


def test_config_check_names_routes_that_log_payloads(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(YAML)
    result = CliRunner().invoke(cli.app, ["config", "check", str(path)])
    assert result.exit_code == 0, result.output
    quiet, audited = result.output.split("route audited")
    assert "payloads: logged" in audited and "payloads" not in quiet
