"""A guard model's deployment must be one of the config's, at the top-level `guard:` and in
a route's: the error names where it is, like a route's unknown target, with a hint."""

from __future__ import annotations

import pytest

from gateway.config.loading import parse_config
from gateway.config.schema import GatewayConfig
from gateway.runtime.yaml_loader import ConfigError
from routing.guard import BLOCK

BASE = """
providers:
  sim: {kind: serverless, protocol: openai, api_base: "http://127.0.0.1:1/v1", api_key: k}
  gpu: {kind: dedicated, protocol: openai, api_base: "http://127.0.0.1:2/v1", api_key: k}
deployments:
  m@sim: {provider: sim, model: m}
  llama-guard@gpu: {provider: gpu, model: meta-llama/Llama-Guard-3-1B}
"""


def _config(text: str) -> GatewayConfig:
    return parse_config(BASE + text, "guard.yaml", {})


def test_a_guard_model_compiles_to_its_check() -> None:
    config = _config(
        """
routes:
  r:
    targets: [m@sim]
    guard:
      - name: classifier
        model: {deployment: llama-guard@gpu, timeout_ms: 250, on_error: closed}
        action: block
"""
    )
    guards = config.guard_checks()["r"]
    (check,) = guards.models
    assert check.model is not None and (check.name, check.action) == ("classifier", BLOCK)
    assert (check.model.deployment, check.model.timeout_s, check.model.fail_closed) == (
        "llama-guard@gpu",
        0.25,
        True,
    )


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (
            "guard: [{name: c, model: {deployment: llama-guard@gpus}, action: flag}]\n"
            "routes:\n  r: {targets: [m@sim]}\n",
            "guard[0].model.deployment",
        ),
        (
            "routes:\n  r:\n    targets: [m@sim]\n    guard:\n"
            "      - {name: pii, detect: [email], action: flag}\n"
            "      - {name: c, model: {deployment: llama-guard@gpus}, action: block}\n",
            "routes.r.guard[1].model.deployment",
        ),
    ],
)
def test_an_unknown_guard_deployment_is_named_with_a_hint(text: str, where: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _config(text)
    (issue,) = caught.value.issues
    assert where in str(issue)
    assert "unknown deployment 'llama-guard@gpus'" in str(issue)
    assert "did you mean 'llama-guard@gpu'" in str(issue)
