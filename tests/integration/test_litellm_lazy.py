"""litellm (seconds and hundreds of MB to import) is loaded only when a configured provider
needs it. Each case runs in a fresh interpreter, since other tests import litellm."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json, sys, urllib.request
from tests.simulator import start_simulator
from tests.gateway_harness import running_gateway, config_from_yaml

base, stop = start_simulator()
extra = sys.argv[1]
yaml = f'''
auth: none
providers:
  sim: {{kind: serverless, protocol: openai, api_base: "{base}/v1"}}
{extra}
deployments:
  small@sim: {{provider: sim, model: sim-small}}
routes:
  chat: {{targets: [small@sim]}}
'''
with running_gateway(config_from_yaml(yaml, {})) as gw:
    body = json.dumps({"model": "chat", "messages": [{"role": "user", "content": "hi"}]})
    for stream in (False, True):
        request = urllib.request.Request(
            gw.base_url + "/chat/completions",
            data=json.dumps({**json.loads(body), "stream": stream}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200, response.status
            response.read()
    loaded = sorted(m for m in sys.modules if m == "litellm" or m.startswith("litellm."))
stop()
print(json.dumps({"litellm_modules": len(loaded)}))
"""


def _run(extra_providers: str) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, extra_providers],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result: dict[str, int] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_openai_only_config_never_imports_litellm() -> None:
    assert _run("")["litellm_modules"] == 0


@pytest.mark.parametrize("protocol", ["anthropic", "gemini"])
def test_a_litellm_protocol_provider_imports_it(protocol: str) -> None:
    extra = f'  other: {{kind: closed_api, protocol: {protocol}, api_key: "k"}}'
    assert _run(extra)["litellm_modules"] > 0
