"""Which deployments can serve a Responses request's tools (pure).

A tool that is not a plain `function` (web_search, file_search, code_interpreter, mcp,
custom…) runs on the upstream itself, so only a native Responses deployment that lists it
in `builtin_tools` can serve the request; translation to chat has no place for it.
"""

from __future__ import annotations

from typing import Any

from routing.model import DeploymentSpec


def built_in_tools(payload: dict[str, Any]) -> frozenset[str]:
    """The non-function tool types a Responses request uses (web_search, mcp, …)."""
    tools = payload.get("tools")
    if not isinstance(tools, list):
        return frozenset()
    return frozenset(
        kind
        for tool in tools
        if isinstance(tool, dict)
        and isinstance(kind := tool.get("type"), str)
        and kind != "function"
    )


def runs_tools(deployment: DeploymentSpec, needed: frozenset[str]) -> bool:
    """Whether `deployment` can serve a request that needs these built-in tools."""
    return not needed or (deployment.responses_native and needed <= deployment.builtin_tools)
