"""Reading a routing YAML: interpolate ${ENV}, validate against the schema, cross-check.

Separate from the schema so the checks (which read the schema's models) sit between the two
and nothing imports back up.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path as FsPath

from pydantic import ValidationError

from gateway.config.checks import build_gates, cross_check, explain, resolve_router_models
from gateway.config.extras import extra_issues
from gateway.config.schema import GatewayConfig
from gateway.runtime.yaml_loader import ConfigError, ConfigIssue, load_yaml


def load_config(
    path: str | os.PathLike[str], env: Mapping[str, str] | None = None
) -> GatewayConfig:
    """Read, interpolate, validate and cross-check a config file; raise ConfigError."""
    file = str(path)
    try:
        text = FsPath(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigIssue(file, None, "", f"cannot read config: {exc}")]) from None
    return parse_config(text, file, os.environ if env is None else env)


def parse_config(text: str, file: str, env: Mapping[str, str]) -> GatewayConfig:
    doc = load_yaml(text, file, env)
    if not isinstance(doc.data, dict):
        raise ConfigError([doc.issue((), "the top level must be a mapping")])
    try:
        config = GatewayConfig.model_validate(doc.data)
    except ValidationError as exc:
        raise ConfigError(explain(exc, doc)) from None
    issues = cross_check(config, doc) + extra_issues(config, doc)
    gates, gate_issues = build_gates(config, doc, FsPath(file).parent)
    issues += gate_issues
    models, model_issues = resolve_router_models(config, doc, FsPath(file).parent)
    issues += model_issues
    if issues:
        raise ConfigError(issues)
    config._gates.update(gates)
    config._router_models.update(models)
    return config
