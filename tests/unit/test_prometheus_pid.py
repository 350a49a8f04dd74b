"""gateway/runtime/prometheus_pid.py: multiprocess metric values keep their per-process files
(fork included) while the pid comes from memory instead of a getpid() per update."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

_SCRIPT = r"""
import json, os, sys
os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
import gateway  # installs the value class before any metric exists
from prometheus_client import Counter, values
from gateway.runtime import prometheus_pid

counter = Counter("farebox_test_pid_total", "test")
for _ in range(100):
    counter.inc()
child = os.fork()
if child == 0:
    counter.inc(5)
    os._exit(0 if prometheus_pid.current_pid() == os.getpid() else 1)
_, status = os.waitpid(child, 0)
print(json.dumps({
    "patched": getattr(values.ValueClass, "_cached_pid", False),
    "child_ok": status == 0,
    "files": sorted(os.listdir(sys.argv[1])),
    "parent": os.getpid(),
    "child": child,
}))
"""


def test_the_value_class_is_swapped_and_keeps_per_process_files(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    seen = json.loads(out.stdout)
    assert seen["patched"]
    assert seen["child_ok"]
    # The parent's and the forked child's values are in their own files, as with getpid().
    assert f"counter_{seen['parent']}.db" in seen["files"]
    assert f"counter_{seen['child']}.db" in seen["files"]
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(tmp_path))
    assert registry.get_sample_value("farebox_test_pid_total") == 105


def test_one_process_is_left_alone() -> None:
    script = (
        "import os; os.environ.pop('PROMETHEUS_MULTIPROC_DIR', None)\n"
        "import sys, gateway\n"
        "print('prometheus_client' in sys.modules)"
    )
    env_free = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert env_free.stdout.strip() == "False"  # nothing imported without the env
