"""The image definition: hadolint-clean, and built the way the deployment docs promise.

No Docker engine runs here, so the image itself is not built; what the image relies on is
checked instead: the lint, the shape of the Dockerfile (non-root, entrypoint, healthcheck, no
migrations at start-up), the build context, and that `farebox migrate` works from an
installed wheel — the layout the image has, with no source tree next to the package.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_hadolint_finds_nothing() -> None:
    done = subprocess.run(
        [str(HADOLINT), "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    findings = json.loads(done.stdout or "[]")
    assert findings == [], findings
    assert done.returncode == 0, done.stderr


def test_runs_as_a_numeric_non_root_user_with_the_serve_entrypoint() -> None:
    steps = instructions()
    stages = [args for op, args in steps if op == "FROM"]
    assert len(stages) >= 2, "multi-stage: build with uv, run on slim"
    assert "slim" in stages[-1]
    final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM") :]
    users = [args for op, args in final if op == "USER"]
    assert users, "the run stage sets a USER"
    args = {a.split("=")[0]: a.split("=")[1] for op, a in final if op == "ARG" and "=" in a}
    uid = users[-1].split(":")[0].replace("${FAREBOX_UID}", args.get("FAREBOX_UID", ""))
    assert uid.isdigit() and int(uid) != 0, users
    assert ("ENTRYPOINT", '["farebox"]') in final
    assert ("CMD", '["serve"]') in final
    assert any(op == "HEALTHCHECK" and "/healthz" in a for op, a in final)
    # Replicas starting together must not race on the schema: migrations are a Job.
    assert not any("migrate" in a for op, a in final if op in ("CMD", "ENTRYPOINT", "RUN"))
    # The spool is the only write path, and it is a volume.
    assert any(op == "VOLUME" and "/var/lib/farebox" in a for op, a in final)
    assert any("FAREBOX_SPOOL_DIR=/var/lib/farebox/spool" in a for op, a in final if op == "ENV")


def test_uv_in_the_image_is_the_version_the_makefile_pins() -> None:
    pinned = re.search(r"^UV_VERSION := (\S+)", (ROOT / "Makefile").read_text(), re.M)
    assert pinned is not None
    assert f"ghcr.io/astral-sh/uv:{pinned.group(1)} " in DOCKERFILE.read_text()


def test_the_build_context_keeps_what_the_image_copies() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    # From the context, not from another stage.
    copied = [
        args.split()[:-1]
        for op, args in instructions()
        if op == "COPY" and not args.startswith("--from")
    ]
    for sources in copied:
        for source in sources:
            if source.startswith("--"):
                continue
            name = source.rstrip("/")
            assert name not in ignored, f"{name} is copied but .dockerignore drops it"
            assert (ROOT / name).exists(), name


def uv_command() -> list[str]:
    """uv as `make install` left it: on PATH, or as the module of the Makefile's python3.
    Offline use only: its cache has the build backend since it installed this project."""
    found = shutil.which("uv")
    if found is not None:
        return [found]
    python = shutil.which("python3")
    assert python is not None
    probe = subprocess.run([python, "-m", "uv", "--version"], capture_output=True, timeout=60)
    assert probe.returncode == 0, "uv is needed to build the wheel (make install provides it)"
    return [python, "-m", "uv"]


def test_farebox_migrate_works_from_an_installed_wheel(tmp_path: Path) -> None:
    """Build the wheel, install it (no deps: the test venv's are borrowed) into a fresh
    environment, and migrate an SQLite file from a directory with no source tree."""
    uv = uv_command()
    dist = tmp_path / "dist"
    subprocess.run(
        [*uv, "build", "--wheel", "--offline", "-o", str(dist), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=180,
    )
    wheel = next(dist.glob("farebox-*.whl"))
    env_dir = tmp_path / "env"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=60
    )
    python = env_dir / "bin" / "python"
    subprocess.run(
        [*uv, "pip", "install", "--offline", "--no-deps", "--python", str(python), str(wheel)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    # Dependencies from the test venv, appended after the new env's own site-packages (a
    # plain path line: the test venv's editable farebox .pth is not processed).
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (site / "borrowed_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    assert (env_dir / "share" / "farebox" / "migrations" / "env.py").is_file()
    work = tmp_path / "elsewhere"
    work.mkdir()
    url = f"sqlite+aiosqlite:///{work / 'ledger.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAREBOX_")}
    done = subprocess.run(
        [str(env_dir / "bin" / "farebox"), "migrate", "--database-url", url],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ledger schema at head" in done.stdout
    located = subprocess.run(
        [str(python), "-c", "import gateway.ledger.migrate as m; print(m.SCRIPTS)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert located == str(env_dir / "share" / "farebox" / "migrations")
    import sqlite3

    with sqlite3.connect(work / "ledger.db") as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert {"requests", "attempts", "api_keys", "alembic_version"} <= tables
