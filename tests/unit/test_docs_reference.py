"""The manual cannot go stale: the generated references match the code, and the site builds.

The config and CLI reference pages are generated from the schema and the Typer app and
committed (so they read in the repository too); when the code changes and nobody reran
`make docs`, this fails. The strict build (under a second) catches broken links and pages
missing from the site.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("generator", ["gen_config_reference.py", "gen_cli_reference.py"])
def test_generated_reference_is_current(generator: str) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "docs" / generator), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def test_site_builds_strict(tmp_path: Path) -> None:
    mkdocs = Path(sys.executable).parent / "mkdocs"
    done = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert (tmp_path / "site" / "reference" / "config" / "index.html").exists()
