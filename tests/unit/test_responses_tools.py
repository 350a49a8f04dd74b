"""Which deployments can serve a Responses request's built-in tools (routing, pure)."""

from __future__ import annotations

from routing.model import DeploymentSpec
from routing.responses_tools import built_in_tools, runs_tools


def _dep(native: bool, tools: frozenset[str] = frozenset()) -> DeploymentSpec:
    return DeploymentSpec(
        id="d", provider="p", provider_kind="closed_api", protocol="openai",
        upstream_model="m", responses_native=native, builtin_tools=tools,
    )  # fmt: skip


def test_only_native_deployments_listing_every_tool_run_them() -> None:
    needed = built_in_tools({"tools": [{"type": "web_search"}, {"type": "function"}]})
    assert needed == {"web_search"}
    assert runs_tools(_dep(True, frozenset({"web_search", "file_search"})), needed)
    assert not runs_tools(_dep(True, frozenset({"file_search"})), needed)
    assert not runs_tools(_dep(False, frozenset({"web_search"})), needed)
    # Function tools alone need nothing: every deployment serves them.
    assert runs_tools(_dep(False), built_in_tools({"tools": [{"type": "function"}]}))
