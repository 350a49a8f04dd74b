"""Read the comments of config/gateway.example.yaml by key path, for the config reference.

The example file is the annotated tour of every option; its comments are written for users,
so the reference uses them where the schema's own source has no comment for a field. Paths
are tuples of key names (`("server", "retry", "attempts")`, since names such as deployment ids
may contain dots); list items add no segment (`("auth", "keys", "name")`).
A comment-only line under an inline comment, in the same column, continues it; a commented-out
key (`# threshold: 0.95  # …`) counts like a written one.
"""

from __future__ import annotations

import re
from pathlib import Path

_KEY = re.compile(r"^(?P<indent>\s*)(?P<dash>- )?(?P<key>[A-Za-z_][\w.@-]*):(?P<rest>.*)$")


def _split_comment(rest: str) -> tuple[str, str | None, int]:
    """(value, comment, offset of '#' in rest) for the text after `key:`; quotes respected."""
    quote: str | None = None
    for i, ch in enumerate(rest):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "#" and (i == 0 or rest[i - 1].isspace()):
            return rest[:i], rest[i + 1 :].strip(), i
    return rest, None, -1


def read(path: Path) -> dict[tuple[str, ...], str]:
    """Key path → its inline comment (or, without one, the comment block just above it)."""
    found: dict[tuple[str, ...], str] = {}
    stack: list[tuple[int, str]] = []
    block: list[str] = []
    last: tuple[tuple[str, ...], int] | None = None  # (path, column of its inline '#')
    for raw in path.read_text().splitlines():
        line = raw.rstrip()
        stripped = line.lstrip()
        if not stripped:
            block, last = [], None
            continue
        if stripped.startswith("#"):
            column = len(line) - len(stripped)
            text = stripped.lstrip("#").strip()
            if last is not None and column == last[1]:
                found[last[0]] += " " + text
                continue
            match = _KEY.match(" " * column + text)
            if match is None or not _split_comment(match["rest"])[1]:
                block.append(text)
                continue
            line = " " * column + text  # a commented-out key: read it as written
        match = _KEY.match(line)
        if match is None:
            block, last = [], None
            continue
        indent = len(match["indent"]) + (2 if match["dash"] else 0)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key_path = (*(k for _, k in stack), match["key"])
        stack.append((indent, match["key"]))
        _, comment, offset = _split_comment(match["rest"])
        if comment:
            found.setdefault(key_path, comment)
            last = (key_path, len(line) - len(match["rest"]) + offset)
        else:
            if block:
                found.setdefault(key_path, " ".join(block))
            last = None
        block = []
    return found
