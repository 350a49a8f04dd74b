"""A config or setting that needs an optional extra which is not installed fails with one
line naming the extra. The dev environment has every extra, so each case runs in a
subprocess where `sys.modules[name] = None` makes the extra's import fail."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

CONFIG = """\
providers:
  sim: {kind: serverless, protocol: openai, api_base: http://127.0.0.1:1/v1, api_key: x}
  vtx: {kind: closed_api, protocol: vertex_ai}
deployments:
  small@sim: {provider: sim, model: small, price: {input: 1, output: 1}}
  gem@vtx: {provider: vtx, model: gemini-2.5-flash, price: {input: 1, output: 1}}
routes:
  chat:
    strategy: direct
    targets: [small@sim]
    cache: {mode: semantic}
  gem:
    strategy: direct
    targets: [gem@vtx]
"""


def _run(blocked: str, code: str) -> subprocess.CompletedProcess[str]:
    script = f"import sys\nsys.modules[{blocked!r}] = None\n" + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("blocked", "extra", "where"),
    [
        ("wordllama", "semantic-cache", "routes.chat.cache.mode"),
        ("google.auth", "vertex", "providers.vtx.protocol"),
    ],
)
def test_config_names_the_missing_extra(blocked: str, extra: str, where: str) -> None:
    done = _run(
        blocked,
        f"""
        from gateway.config.loading import parse_config
        from gateway.runtime.yaml_loader import ConfigError
        try:
            parse_config({CONFIG!r}, "gw.yaml", {{}})
        except ConfigError as exc:
            print("\\n".join(str(issue) for issue in exc.issues))
        else:
            print("no error")
        """,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1, lines
    assert where in lines[0]
    assert f"pip install 'farebox[{extra}]'" in lines[0]


def test_config_passes_with_every_extra() -> None:
    from gateway.config.loading import parse_config

    config = parse_config(CONFIG, "gw.yaml", {})
    assert set(config.routes) == {"chat", "gem"}


def test_tracing_without_the_otel_extra_names_it() -> None:
    done = _run(
        "opentelemetry.sdk.trace",
        """
        from gateway.extras import MissingExtra
        from gateway.observability import telemetry
        try:
            telemetry.configure("http://127.0.0.1:4318/v1/traces")
        except MissingExtra as exc:
            print(exc.extra, exc)
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("otel "), done.stdout
    assert "pip install 'farebox[otel]'" in done.stdout
