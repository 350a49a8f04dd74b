"""The `farebox` entry point: `farebox serve` without loading the rest of the CLI.

Every serving process imports this module: the console script, and each worker a multi-worker
`farebox serve` spawns (multiprocessing re-imports the script's imports in the child). The other
commands' modules (reports with rich tables, keys, drills, the router tooling) cost about 3 MB
of resident memory per worker (issue #25), so they load only for the commands that need them
(gateway/cli/commands.py). `app` is still importable from here (tests drive it with CliRunner).
"""

from __future__ import annotations

import sys
from typing import Any


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        from gateway.cli.serve import serve_only

        serve_only(sys.argv[2:])
        return
    from gateway.cli.commands import main as every_command

    every_command()


def __getattr__(name: str) -> Any:
    if name == "app":
        from gateway.cli.commands import app

        return app
    raise AttributeError(name)
