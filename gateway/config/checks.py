"""Reporting config problems: cross-reference checks after validation, and pydantic's
errors turned into `file:line: key.path: message` with "did you mean" suggestions."""

from __future__ import annotations

import types
import typing
from pathlib import Path as FsPath
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from gateway.config.fanout import fanout_issues
from gateway.config.guard import GuardCheck
from gateway.config.routes import Route
from gateway.config.schema import GatewayConfig, _suggest
from gateway.router.scoring import quality_target_problem
from gateway.runtime.yaml_loader import ConfigIssue, LocatedDocument, Path
from routing.gates import GateSpec
from routing.model import GatePolicy
from routing.value_maps import load_value_map


def cross_check(config: GatewayConfig, doc: LocatedDocument) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    for dep_id, dep in config.deployments.items():
        if dep.provider not in config.providers:
            issues.append(
                doc.issue(
                    ("deployments", dep_id, "provider"),
                    f"unknown provider {dep.provider!r}{_suggest(dep.provider, config.providers)}",
                )
            )
    for name, route in config.routes.items():
        if name in config.deployments:
            issues.append(
                doc.issue(("routes", name), f"route name {name!r} is also a deployment id")
            )
        seen: set[str] = set()
        listed = [("targets", i, t) for i, t in enumerate(route.targets)]
        listed += [("fallbacks", i, t) for i, t in enumerate(route.fallbacks)]
        for section, i, target in listed:
            where: Path = ("routes", name, section, i)
            if target not in config.deployments:
                hint = _suggest(target, config.deployments)
                issues.append(doc.issue(where, f"unknown deployment {target!r}{hint}"))
            elif target in seen:
                issues.append(doc.issue(where, f"deployment {target!r} is listed twice"))
            seen.add(target)
        if route.hedge_after_ms is not None and len(route.targets) + len(route.fallbacks) < 2:
            issues.append(
                doc.issue(("routes", name, "hedge_after_ms"), "hedging needs a second target")
            )
        for target in route.weights:
            if target not in route.targets:
                issues.append(
                    doc.issue(
                        ("routes", name, "weights", target),
                        f"{target!r} is not one of this route's targets",
                    )
                )
        if route.weights and route.strategy != "weighted":
            issues.append(
                doc.issue(("routes", name, "weights"), "weights are for strategy weighted")
            )
        if route.sticky and route.strategy != "weighted":
            issues.append(doc.issue(("routes", name, "sticky"), "sticky is for strategy weighted"))
        if route.strategy == "cascade" and route.gate is None:
            issues.append(
                doc.issue(("routes", name), "strategy cascade needs a `gate:` between its targets")
            )
        if route.strategy in ("cascade", "quality") and len(route.targets) < 2:
            issues.append(
                doc.issue(
                    ("routes", name, "targets"),
                    f"strategy {route.strategy} needs at least two targets, cheap first",
                )
            )
        quality_keys = [
            k
            for k in ("threshold", "strong_share", "target_quality", "router_model")
            if getattr(route, k) is not None
        ]
        if quality_keys and route.strategy != "quality":
            issues.append(
                doc.issue(("routes", name, quality_keys[0]), "this is for strategy quality")
            )
        policies = [
            k
            for k in ("threshold", "strong_share", "target_quality")
            if getattr(route, k) is not None
        ]
        if len(policies) > 1:
            issues.append(
                doc.issue(
                    ("routes", name, policies[1]),
                    "give one of threshold, strong_share or target_quality",
                )
            )
        elif (problem := _quality_target_issue(route)) is not None:
            issues.append(doc.issue(("routes", name, "target_quality"), problem))
        issues += fanout_issues(name, route, doc)
        if route.strategy == "direct" and len(route.targets) != 1:
            issues.append(
                doc.issue(
                    ("routes", name, "targets"),
                    f"strategy direct takes exactly one target, got {len(route.targets)} "
                    "(use strategy failover, or list the others under fallbacks)",
                )
            )
    issues += _check_drills(config, doc)
    issues += _check_guard_models(config, doc)
    seen_keys: dict[str, int] = {}
    for i, api_key in enumerate(config.api_keys()):
        if api_key.name in seen_keys:
            issues.append(
                doc.issue(("auth", "keys", i, "name"), f"duplicate key name {api_key.name!r}")
            )
        seen_keys[api_key.name] = i
    return issues


def _quality_target_issue(route: Route) -> str | None:
    """Why a quality route's `target_quality` cannot be met by its router model."""
    if route.target_quality is None or route.strategy != "quality":
        return None
    return quality_target_problem(route.router_model, route.target_quality)


def _check_drills(config: GatewayConfig, doc: LocatedDocument) -> list[ConfigIssue]:
    """Scheduled drills name a route and a deployment that exist, and have unique names
    (a schedule's last drill is looked up by name)."""
    issues: list[ConfigIssue] = []
    names: set[str] = set()
    for i, schedule in enumerate(config.drills):
        if schedule.route not in config.routes:
            hint = _suggest(schedule.route, config.routes)
            message = f"unknown route {schedule.route!r}{hint}"
            issues.append(doc.issue(("drills", i, "route"), message))
        if schedule.to not in config.deployments:
            hint = _suggest(schedule.to, config.deployments)
            message = f"unknown deployment {schedule.to!r}{hint}"
            issues.append(doc.issue(("drills", i, "to"), message))
        name = schedule.schedule_name
        if name in names:
            where: Path = ("drills", i, "name") if schedule.name else ("drills", i)
            message = f"duplicate drill schedule {name!r}: give each a `name:`"
            issues.append(doc.issue(where, message))
        names.add(name)
    return issues


def _check_guard_models(config: GatewayConfig, doc: LocatedDocument) -> list[ConfigIssue]:
    """A guard model (top-level `guard:` or a route's) runs on a deployment of the config:
    a misspelt one would otherwise only show as every request's model failing."""
    blocks: list[tuple[Path, list[GuardCheck]]] = [(("guard",), config.guard)]
    blocks += [(("routes", n, "guard"), r.guard) for n, r in config.routes.items() if r.guard]
    issues: list[ConfigIssue] = []
    for where, checks in blocks:
        for i, check in enumerate(checks):
            if check.model is None or check.model.deployment in config.deployments:
                continue
            name = check.model.deployment
            hint = _suggest(name, config.deployments)
            path: Path = (*where, i, "model", "deployment")
            issues.append(doc.issue(path, f"unknown deployment {name!r}{hint}"))
    return issues


def explain(exc: ValidationError, doc: LocatedDocument) -> list[ConfigIssue]:
    issues = []
    for err in exc.errors(include_url=False):
        loc = _clean_loc(err["loc"])
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(GatewayConfig, loc[:-1])
            key = str(loc[-1])
            hint = _suggest(key, allowed)
            known = f"; valid keys: {', '.join(sorted(allowed))}" if allowed and not hint else ""
            message = f"unknown key {key!r}{hint}{known}"
        elif err["type"] == "missing":
            message = "required key is missing"
        else:
            message = err["msg"].removeprefix("Value error, ")
            if "input" in err and err["type"] not in ("value_error",) and _short(err["input"]):
                message += f" (got {err['input']!r})"
        issue = doc.issue(loc, message)
        if issue not in issues:
            issues.append(issue)
    return issues


def _clean_loc(loc: tuple[int | str, ...]) -> Path:
    return tuple(loc)


def _short(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) and len(repr(value)) <= 60


def _allowed_keys(model: Any, loc: Path) -> list[str]:
    """Field names valid at `loc`, found by walking the model's annotations."""
    current: Any = model
    for part in loc:
        current = _unwrap_model(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            if not isinstance(part, str) or part not in current.model_fields:
                return []
            current = current.model_fields[part].annotation
        else:
            current = _container_item(current)
            if current is None:
                return []
    current = _unwrap_model(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _unwrap_model(annotation: Any) -> Any:
    """From `X | None` or `Literal[...] | X`, pick the BaseModel branch if there is one."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                return arg
    return annotation


def _container_item(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is dict and len(args) == 2:
        return args[1]
    if origin is list and args:
        return args[0]
    return None


def build_gates(
    config: GatewayConfig, doc: LocatedDocument, base_dir: FsPath
) -> tuple[dict[str, GatePolicy], list[ConfigIssue]]:
    """Each route's gate: normalization maps read (files relative to the config file),
    schema and regex checked by building the spec."""
    gates: dict[str, GatePolicy] = {}
    issues: list[ConfigIssue] = []
    for name, route in config.routes.items():
        gate = route.gate
        if gate is None:
            continue
        where: Path = ("routes", name, "gate")
        maps: dict[str, dict[str, str]] = {}
        for field_path, source in gate.normalize.items():
            data: Any = source
            if isinstance(source, str):
                path = base_dir / source
                try:
                    data = yaml.safe_load(path.read_text(encoding="utf-8"))
                except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
                    issues.append(
                        doc.issue((*where, "normalize", field_path), f"cannot read {path}: {exc}")
                    )
                    continue
            table, problems = load_value_map(data, str(source) if isinstance(source, str) else "")
            issues += [doc.issue((*where, "normalize", field_path), p) for p in problems]
            maps[field_path] = table
        try:
            spec = GateSpec(
                json_schema=gate.json_schema,
                tool_arguments=gate.tool_arguments,
                reject_truncated=gate.reject_truncated,
                non_empty=gate.non_empty,
                not_refusal=gate.not_refusal,
                regex=gate.regex,
                normalize=maps,
            )
        except ValueError as exc:
            issues.append(doc.issue(where, str(exc)))
            continue
        gates[name] = GatePolicy(spec, gate.on_fail, gate.buffer_streams)
    return gates, issues


def resolve_router_models(
    config: GatewayConfig, doc: LocatedDocument, base_dir: FsPath
) -> tuple[dict[str, str], list[ConfigIssue]]:
    """`router_model` files, relative to the config file, must exist."""
    found: dict[str, str] = {}
    issues: list[ConfigIssue] = []
    for name, route in config.routes.items():
        if route.router_model is None:
            continue
        path = base_dir / route.router_model
        if not path.is_file():
            issues.append(doc.issue(("routes", name, "router_model"), f"no such file: {path}"))
        else:
            found[name] = str(path.resolve())
    return found, issues
