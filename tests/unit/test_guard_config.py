"""The `guard:` block: what a config may say, the errors a wrong one gets, and what each
route ends up with (its own checks, the top-level default, or none with `guard: []`)."""

from __future__ import annotations

import pytest

from gateway.config.loading import parse_config
from gateway.config.schema import GatewayConfig
from gateway.runtime.yaml_loader import ConfigError
from routing.guard import BLOCK, MASK, REROUTE
from routing.pii import CARD, EMAIL, SECRET

BASE = """
providers:
  sim: {kind: serverless, protocol: openai, api_base: "http://127.0.0.1:1/v1", api_key: k}
deployments:
  m@sim: {provider: sim, model: m}
"""


def _config(text: str) -> GatewayConfig:
    return parse_config(BASE + text, "guard.yaml", {})


def test_routes_get_their_own_checks_the_default_or_none() -> None:
    config = _config(
        """
guard: [{name: no-keys, detect: [secret], action: block}]
routes:
  plain: {targets: [m@sim]}
  own:
    targets: [m@sim]
    guard:
      - name: pii
        detect: [email, card]
        custom: [{kind: ssn, regex: '\\d{3}-\\d{2}-\\d{4}'}, {kind: project, terms: [Nightjar]}]
        action: mask
      - {name: local, detect: [email], action: reroute, allow: [dedicated]}
  none: {targets: [m@sim], guard: []}
"""
    )
    checks = config.guard_checks()
    assert set(checks) == {"plain", "own"}
    (default,) = checks["plain"].request
    assert (default.name, default.action, default.kinds) == ("no-keys", BLOCK, (SECRET,))
    pii, local = checks["own"].request
    assert (pii.action, pii.kinds, [c.kind for c in pii.custom]) == (
        MASK,
        (EMAIL, CARD),
        ["SSN", "PROJECT"],
    )
    assert (local.action, local.allow_kinds) == (REROUTE, frozenset({"dedicated"}))


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("[{name: x, detect: [email], action: reroute}]", "reroute needs `allow`"),
        ("[{name: x, action: flag}]", "detects nothing"),
        ("[{name: x, detect: [emails], action: flag}]", "detect"),
        ("[{name: x, custom: [{kind: a, regex: '('}], action: flag}]", "does not compile"),
        ("[{name: x, custom: [{kind: a}], action: flag}]", "either `regex` or `terms`"),
        ("[{name: x, injection: {}, action: mask}]", "cannot be masked"),
        ("[{name: x, detect: [ip], action: flag, allow: [dedicated]}]", "only goes with"),
        ("[{name: x, detect: [ip], action: drop}]", "action"),
        (
            "[{name: x, detect: [ip], reads: [answer], action: reroute, allow: [dedicated]}]",
            "cannot be rerouted",
        ),
        ("[{name: x, injection: {}, reads: [answer], action: flag}]", "read requests only"),
        ("[{name: x, model: {deployment: g}, action: mask}]", "cannot be masked"),
        ("[{name: x, detect: [ip], reads: [], action: flag}]", "reads"),
        ("[{name: x, model: {deployment: g, on_error: maybe}, action: flag}]", "on_error"),
        (
            "[{name: x, detect: [ip], action: flag}, {name: x, detect: [card], action: flag}]",
            "unique",
        ),
    ],
)
def test_a_wrong_guard_block_is_a_clear_config_error(block: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(f"routes:\n  r: {{targets: [m@sim], guard: {block}}}\n")
