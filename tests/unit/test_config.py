"""The YAML schema: strict keys, line numbers, suggestions, interpolation, cross-references."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.loading import load_config, parse_config
from gateway.runtime.yaml_loader import ConfigError

ROOT = Path(__file__).resolve().parents[2]

BASE = """\
providers:
  sim:
    kind: serverless
    api_base: http://127.0.0.1:9/v1
    api_key: "${SIM_KEY:-k}"
deployments:
  small@sim: {provider: sim, model: sim-small}
  big@sim: {provider: sim, model: sim-big, price: {input: 1, output: 2}}
routes:
  chat:
    targets: [small@sim]
"""


def errors_of(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "cfg.yaml", env or {})
    return [str(issue) for issue in info.value.issues]


def test_valid_config_resolves_routes_deployments_and_upstream_names() -> None:
    config = parse_config(BASE, "cfg.yaml", {})
    index = config.model_index()
    chat = index.plan("chat")
    assert chat is not None and chat.attempts[0].deployment.id == "small@sim"
    by_id = index.plan("big@sim")
    assert by_id is not None and by_id.attempts[0].deployment.upstream_model == "sim-big"
    by_upstream = index.plan("sim-big")
    assert by_upstream is not None and by_upstream.attempts[0].deployment.id == "big@sim"
    assert index.plan("nope") is None
    assert index.routable_names() == ["chat", "small@sim", "big@sim"]


def test_env_interpolation_with_default_and_override() -> None:
    assert parse_config(BASE, "c", {}).providers["sim"].api_key == "k"
    assert parse_config(BASE, "c", {"SIM_KEY": "secret"}).providers["sim"].api_key == "secret"


def test_missing_env_var_names_line_and_path() -> None:
    text = BASE.replace("${SIM_KEY:-k}", "${SIM_KEY}")
    assert errors_of(text) == [
        "cfg.yaml:5: providers.sim.api_key: environment variable SIM_KEY is not set "
        "(write ${SIM_KEY:-default})"
    ]


def test_unknown_key_suggests_closest_field() -> None:
    text = BASE.replace("api_base:", "api_bse:")
    errs = errors_of(text)
    assert (
        "cfg.yaml:4: providers.sim.api_bse: unknown key 'api_bse' (did you mean 'api_base'?)"
        in errs
    )
    assert "cfg.yaml:2: providers.sim.api_base: required key is missing" in errs


def test_unknown_key_without_close_match_lists_valid_keys() -> None:
    text = BASE + "    colour: blue\n"
    (err,) = errors_of(text)
    assert err.startswith("cfg.yaml:12: routes.chat.colour: unknown key 'colour'; valid keys:")
    assert "targets" in err and "strategy" in err


def test_dangling_references_suggest_names() -> None:
    text = BASE.replace("provider: sim, model: sim-small", "provider: simm, model: sim-small")
    text = text.replace("targets: [small@sim]", "targets: [smal@sim]")
    errs = errors_of(text)
    assert (
        "cfg.yaml:7: deployments.small@sim.provider: unknown provider 'simm' (did you mean 'sim'?)"
        in errs
    )
    assert (
        "cfg.yaml:11: routes.chat.targets[0]: unknown deployment 'smal@sim' "
        "(did you mean 'small@sim'?)" in errs
    )


def test_duplicate_keys_are_errors_not_silent_overrides() -> None:
    text = BASE + "  chat:\n    targets: [big@sim]\n"
    assert errors_of(text) == ["cfg.yaml:12: routes.chat: duplicate key (first defined on line 10)"]


def test_impossible_values_and_wrong_types() -> None:
    text = BASE.replace("price: {input: 1, output: 2}", "price: {input: -1, output: cheap}")
    errs = errors_of(text)
    assert any(
        e.startswith("cfg.yaml:8: deployments.big@sim.price.input: Input should be greater")
        for e in errs
    )
    assert any(
        e.startswith("cfg.yaml:8: deployments.big@sim.price.output: Input should be a valid number")
        for e in errs
    )


def test_unknown_strategy_and_bad_url_and_kind() -> None:
    text = BASE.replace("    targets: [small@sim]", "    strategy: drect\n    targets: [small@sim]")
    text = text.replace("http://127.0.0.1:9/v1", "ftp://x").replace("kind: serverless", "kind: gpu")
    errs = errors_of(text)
    assert any(
        "routes.chat.strategy: unknown strategy 'drect' (did you mean 'direct'?)" in e for e in errs
    )
    assert any("providers.sim.api_base: must be an http:// or https:// URL" in e for e in errs)
    assert any(
        e.startswith("cfg.yaml:3: providers.sim.kind: Input should be 'serverless'") for e in errs
    )


def test_direct_route_needs_exactly_one_target_and_no_name_clash() -> None:
    text = BASE.replace("targets: [small@sim]", "targets: [small@sim, big@sim]")
    text += "  big@sim: {targets: [big@sim]}\n"
    errs = errors_of(text)
    assert (
        "cfg.yaml:11: routes.chat.targets: strategy direct takes exactly one target, got 2 "
        "(use strategy failover, or list the others under fallbacks)" in errs
    )
    assert "cfg.yaml:12: routes.big@sim: route name 'big@sim' is also a deployment id" in errs


def test_invalid_yaml_reports_line() -> None:
    (err,) = errors_of("providers:\n  sim: [1, 2\n")
    assert err.startswith("cfg.yaml:") and "invalid YAML" in err


def test_top_level_must_be_mapping_and_empty_file_is_valid() -> None:
    assert errors_of("- 1\n- 2\n") == ["cfg.yaml:1: the top level must be a mapping"]
    assert parse_config("", "c", {}).routes == {}


def test_auth_none_must_be_explicit() -> None:
    assert not parse_config(BASE, "c", {}).auth_disabled
    assert parse_config(BASE + "auth: none\n", "c", {}).auth_disabled
    assert errors_of(BASE + "auth: off\n") == [
        "cfg.yaml:12: auth: must be `none` or a mapping with `keys:`"
    ]


def test_route_timeouts_inherit_server_defaults() -> None:
    text = BASE + "    timeouts: {ttft_ms: 1500}\nserver:\n  timeouts: {total_ms: 9000}\n"
    plan = parse_config(text, "c", {}).model_index().plan("chat")
    assert plan is not None
    assert (plan.timeouts.ttft_ms, plan.timeouts.total_ms, plan.timeouts.connect_ms) == (
        1500,
        9000,
        5000,
    )


def test_failover_route_with_fallbacks_retry_and_hedge() -> None:
    text = BASE.replace(
        "  chat:\n    targets: [small@sim]\n",
        "  chat:\n    strategy: failover\n    targets: [small@sim]\n    fallbacks: [big@sim]\n"
        "    retry: {attempts: 3, backoff_ms: 50}\n    hedge_after_ms: 700\n",
    )
    plan = parse_config(text, "c", {}).model_index().plan("chat")
    assert plan is not None
    assert [(a.deployment.id, a.role) for a in plan.attempts] == [
        ("small@sim", "primary"),
        ("big@sim", "fallback"),
    ]
    assert (plan.retry.attempts, plan.retry.backoff_ms, plan.retry.max_backoff_ms) == (3, 50, 2000)
    inherited = parse_config(text + "server: {retry: {max_backoff_ms: 900}}\n", "c", {})
    chat = inherited.model_index().plan("chat")
    assert chat is not None and (chat.retry.attempts, chat.retry.max_backoff_ms) == (3, 900)
    assert plan.hedge_after_ms == 700


def test_fallback_references_are_checked_and_hedging_needs_two_targets() -> None:
    text = BASE.replace(
        "    targets: [small@sim]\n",
        "    targets: [small@sim]\n    fallbacks: [bgi@sim, small@sim]\n",
    )
    errs = errors_of(text)
    assert any("routes.chat.fallbacks[0]: unknown deployment 'bgi@sim'" in e for e in errs)
    assert any(
        "routes.chat.fallbacks[1]: deployment 'small@sim' is listed twice" in e for e in errs
    )
    lone = BASE.replace(
        "    targets: [small@sim]\n", "    targets: [small@sim]\n    hedge_after_ms: 5\n"
    )
    assert any("hedging needs a second target" in e for e in errors_of(lone))


def test_merge_keys_and_anchors_work() -> None:
    text = BASE.replace(
        "  sim:\n",
        "  base: &base {kind: serverless, api_base: http://a/v1}\n  sim:\n    <<: *base\n",
    )
    config = parse_config(text, "c", {})
    assert config.providers["base"].api_base == "http://a/v1"


@pytest.mark.parametrize("name", ["demo.yaml", "gateway.example.yaml"])
def test_shipped_configs_load(name: str) -> None:
    config = load_config(ROOT / "config" / name, env={})
    assert config.routes, f"{name} defines no routes"
    index = config.model_index()
    for route in config.routes:
        assert index.plan(route) is not None


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml", env={})
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"routes: {caf\xe9: 1}\n")
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(bad, env={})
