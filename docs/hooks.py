"""mkdocs hook: repository files the manual links to become part of the site.

The pages link to files outside docs/ the way GitHub shows them (`../bench/RESULTS.md`,
`../helm/farebox/README.md`), so the links work when the Markdown is read in the repository.
mkdocs would report such links as not found, and `--strict` would fail the build. This hook adds
each linked repository file to the site under `repo/<path>` (Markdown rendered as a page,
anything else served as is) and points the link there. A link to a file that does not exist
fails the build, as a broken link inside docs/ does. The files are read at build time, never
copied into docs/: figures stay only in bench/RESULTS.md.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

# ](../some/path) or ](../some/path#anchor) — the Markdown link targets that leave docs/.
_OUTSIDE = re.compile(r"\]\((?P<target>(?:\.\./)+[^)#\s]+)(?P<anchor>#[^)\s]*)?\)")
_PREFIX = "repo"


def _repo_target(docs_dir: Path, page_uri: str, target: str) -> str | None:
    """The repo-relative path a link points at, or None when it stays inside docs/."""
    resolved = (docs_dir / posixpath.dirname(page_uri) / target).resolve()
    root = docs_dir.resolve().parent
    if resolved.is_relative_to(docs_dir.resolve()):
        return None
    if not resolved.is_relative_to(root):
        raise PluginError(f"{page_uri}: link {target} leaves the repository")
    if not resolved.is_file():
        raise PluginError(f"{page_uri}: link {target} names no file in the repository")
    return resolved.relative_to(root).as_posix()


def on_files(files: Files, config: Any) -> Files:
    docs_dir = Path(config["docs_dir"])
    wanted: set[str] = set()
    for page in files.documentation_pages():
        text = Path(page.abs_src_path or "").read_text(encoding="utf-8")
        for match in _OUTSIDE.finditer(text):
            path = _repo_target(docs_dir, page.src_uri, match["target"])
            if path is not None:
                wanted.add(path)
    root = docs_dir.resolve().parent
    for path in sorted(wanted):
        files.append(File.generated(config, f"{_PREFIX}/{path}", abs_src_path=str(root / path)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    docs_dir = Path(config["docs_dir"])
    here = posixpath.dirname(page.file.src_uri)

    def rewrite(match: re.Match[str]) -> str:
        path = _repo_target(docs_dir, page.file.src_uri, match["target"])
        if path is None:
            return match.group(0)
        link = posixpath.relpath(f"{_PREFIX}/{path}", here or ".")
        return f"]({link}{match['anchor'] or ''})"

    return _OUTSIDE.sub(rewrite, markdown)
