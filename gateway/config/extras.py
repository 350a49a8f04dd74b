"""Config entries that need an optional extra (gateway/extras.py) which is not installed:
reported like any other config problem, at the entry's line, naming the extra to install."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.extras import MissingExtra, installed
from gateway.runtime.yaml_loader import ConfigIssue, LocatedDocument

if TYPE_CHECKING:
    from gateway.config.schema import GatewayConfig


def extra_issues(config: GatewayConfig, doc: LocatedDocument) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    for name, provider in config.providers.items():
        if provider.protocol == "vertex_ai" and not installed("vertex"):
            issues.append(doc.issue(("providers", name, "protocol"), str(MissingExtra("vertex"))))
    for name, route in config.routes.items():
        semantic = route.cache is not None and route.cache.mode == "semantic"
        if semantic and not installed("semantic-cache"):
            where = ("routes", name, "cache", "mode")
            issues.append(doc.issue(where, str(MissingExtra("semantic-cache"))))
    return issues
