"""Shared by the reference generators: write a generated page, or with --check fail if the
committed one differs (so CI catches a stale page instead of quietly regenerating it)."""

from __future__ import annotations

import sys
from pathlib import Path


def write_or_check(out: Path, root: Path, text: str, argv: list[str]) -> int:
    if "--check" in argv:
        if not out.exists() or out.read_text() != text:
            print(f"{out.relative_to(root)} is stale: run `make docs`", file=sys.stderr)
            return 1
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return 0
