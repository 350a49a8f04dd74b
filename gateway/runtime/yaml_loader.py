"""YAML reading that remembers where every value came from.

PyYAML's plain loaders forget line numbers and silently keep the last of two duplicate keys;
both make config errors hard to find. We walk the composed node tree ourselves so each value
has a key path → line entry, and interpolate `${VAR}` / `${VAR:-default}` in strings.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

Path = tuple[str | int, ...]

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class ConfigIssue:
    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(Exception):
    """One or more problems in a config file; str() lists them all, one per line."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


def format_path(path: Path) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


@dataclass
class LocatedDocument:
    data: Any
    file: str
    lines: dict[Path, int] = field(default_factory=dict)

    def line_of(self, path: Path) -> int | None:
        """Line of the value at `path`, or of its nearest ancestor that has one."""
        for cut in range(len(path), -1, -1):
            line = self.lines.get(path[:cut])
            if line is not None:
                return line
        return None

    def issue(self, path: Path, message: str) -> ConfigIssue:
        return ConfigIssue(self.file, self.line_of(path), format_path(path), message)


def load_yaml(text: str, file: str, env: Mapping[str, str]) -> LocatedDocument:
    try:
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        msg = " ".join(p for p in (exc.context, exc.problem) if p) or str(exc)
        raise ConfigError([ConfigIssue(file, line, "", f"invalid YAML: {msg}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue(file, None, "", f"invalid YAML: {exc}")]) from None
    doc = LocatedDocument(data=None, file=file)
    if root is None:
        doc.data = {}
        return doc
    issues: list[ConfigIssue] = []
    doc.data = _build(root, (), doc, env, issues, loader)
    if issues:
        raise ConfigError(issues)
    return doc


def _build(
    node: yaml.Node,
    path: Path,
    doc: LocatedDocument,
    env: Mapping[str, str],
    issues: list[ConfigIssue],
    loader: yaml.SafeLoader,
) -> Any:
    doc.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        own = {id(k) for k, _ in node.value}
        loader.flatten_mapping(node)  # resolves `<<:` merge keys
        out: dict[Any, Any] = {}
        merged: set[str] = set()
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool) or key is None:
                issues.append(doc.issue(path, f"mapping key {key!r} is not a plain value"))
                continue
            key = str(key)
            child = (*path, key)
            if id(key_node) not in own:
                merged.add(key)
            elif key in merged:
                merged.discard(key)  # an explicit key may override a merged one
            elif key in out:
                first = doc.lines.get(child)
                issues.append(
                    ConfigIssue(
                        doc.file,
                        key_node.start_mark.line + 1,
                        format_path(child),
                        f"duplicate key (first defined on line {first})",
                    )
                )
                continue
            doc.lines[child] = key_node.start_mark.line + 1
            out[key] = _build(value_node, child, doc, env, issues, loader)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [
            _build(item, (*path, i), doc, env, issues, loader) for i, item in enumerate(node.value)
        ]
    value = loader.construct_object(node, deep=True)
    if isinstance(value, str) and "${" in value:
        return _interpolate(value, path, doc, env, issues)
    return value


def _interpolate(
    value: str,
    path: Path,
    doc: LocatedDocument,
    env: Mapping[str, str],
    issues: list[ConfigIssue],
) -> str:
    def repl(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        issues.append(
            doc.issue(path, f"environment variable {name} is not set (write ${{{name}:-default}})")
        )
        return ""

    return _ENV_REF.sub(repl, value)
