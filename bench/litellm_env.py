"""The LiteLLM proxy comparison target: hash-locked venv install and proxy config.

The pin lives in bench/litellm-requirements.in; bench/litellm-requirements.txt is its
hash-locked resolution (regenerate with `python bench/litellm_env.py --lock`).
Never use litellm 1.82.7 / 1.82.8 (malicious releases) or 1.107.x (compromised);
releases from 1.106.3 on need certifi>=2026.10.19, which this registry lacks.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
VENV = BENCH / ".venv-litellm"
REQ_IN = BENCH / "litellm-requirements.in"
REQ_LOCK = BENCH / "litellm-requirements.txt"
MASTER_KEY = "sk-bench-key"  # the proxy refuses to start without LITELLM_MASTER_KEY
BANNED = {"1.82.7", "1.82.8"}


def pinned_version() -> str:
    match = re.search(r"^litellm\[proxy\]==(\S+)$", REQ_IN.read_text(), re.M)
    if match is None:
        raise SystemExit(f"bench: no exact litellm[proxy]==X pin in {REQ_IN}")
    version = match.group(1)
    if version in BANNED or version.startswith("1.107."):
        raise SystemExit(f"bench: litellm {version} is a known-malicious release")
    return version


def _uv() -> list[str]:
    """uv on PATH, else `python3 -m uv` (how the Makefile installs it), else this Python's."""
    if uv := shutil.which("uv"):
        return [uv]
    for python in (shutil.which("python3"), sys.executable):
        if python is None:
            continue
        probe = subprocess.run([python, "-m", "uv", "--version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return [python, "-m", "uv"]
    raise SystemExit("bench: uv is required to install the LiteLLM venv (make install sets it up)")


def installed_version() -> str | None:
    python = VENV / "bin" / "python"
    if not python.exists():
        return None
    code = "import importlib.metadata as m; print(m.version('litellm'))"
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False)
    return out.stdout.strip() if out.returncode == 0 else None


def ensure_installed() -> str:
    """Create bench/.venv-litellm and install the hash-locked requirements if needed."""
    version = pinned_version()
    stamp = VENV / ".bench-installed"
    if installed_version() == version and stamp.exists() and stamp.read_text() == version:
        return version
    print(f"bench: installing litellm[proxy]=={version} into {VENV} (hash-locked)", flush=True)
    uv = _uv()
    base = os.path.realpath(sys.executable)  # the project's interpreter: no download
    subprocess.run([*uv, "venv", "-q", "--clear", "--python", base, str(VENV)], check=True)
    python = str(VENV / "bin" / "python")
    install = [*uv, "pip", "install", "-q", "--python", python, "--require-hashes"]
    # --compile-bytecode: PYTHONDONTWRITEBYTECODE may be set, and without .pyc files LiteLLM
    # recompiles an optional module whose import fails on every request.
    subprocess.run([*install, "--compile-bytecode", "-r", str(REQ_LOCK)], check=True)
    got = installed_version()
    if got != version:
        raise SystemExit(f"bench: expected litellm {version} in {VENV}, found {got}")
    stamp.write_text(version)
    return version


def lock() -> None:
    """Regenerate the hash-locked requirements from the .in pin."""
    pinned_version()
    compile_ = [*_uv(), "pip", "compile", "-q", "--python-version", "3.11", "--generate-hashes"]
    subprocess.run([*compile_, REQ_IN.name, "-o", REQ_LOCK.name], check=True, cwd=BENCH)


def write_config(path: Path, sim_port: int) -> Path:
    """model_list mirrors Farebox's routes: bench -> sim-small, bench-slow -> 50 ms upstream."""
    entries = []
    routes = (
        ("bench", "sim-small"),
        ("bench-slow", "sim-small::latency=50"),
        ("bench-jitter", "sim-small::latency=45,jitter=10"),
    )
    for name, upstream in routes:
        entries.append(
            f"  - model_name: {name}\n"
            "    litellm_params:\n"
            f'      model: "openai/{upstream}"\n'
            f'      api_base: "http://127.0.0.1:{sim_port}/v1"\n'
            '      api_key: "sim-key"\n'
        )
    path.write_text(
        "model_list:\n" + "".join(entries) + "litellm_settings:\n"
        "  telemetry: false\n"
        "general_settings:\n"
        "  disable_spend_logs: true\n"
    )
    return path


def argv(config: Path, port: int) -> list[str]:
    return [
        str(VENV / "bin" / "litellm"),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]


def env(base: dict[str, str]) -> dict[str, str]:
    out = {k: v for k, v in base.items() if k not in {"DATABASE_URL", "VIRTUAL_ENV"}}
    out.update(
        LITELLM_MASTER_KEY=MASTER_KEY,
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        LITELLM_LOG="ERROR",  # also sets uvicorn's level: no per-request access log
        DISABLE_ADMIN_UI="True",
        PATH=f"{VENV / 'bin'}{os.pathsep}{base.get('PATH', '')}",
    )
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Install or re-lock the LiteLLM bench venv")
    parser.add_argument("--lock", action="store_true", help="regenerate the hash lock")
    if parser.parse_args().lock:
        lock()
    print(ensure_installed())
