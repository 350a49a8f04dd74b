"""The HTTP layer, side by side: the same bare passthrough under three servers.

    python bench/http_layer.py [--rounds 4] [--seconds 4] [--granian /path/to/venv/bin/python]
    python bench/http_layer.py --micro     # the protocols alone, in process (no sockets)

The app is bench/passthrough.py's (raw ASGI + one aiohttp session + orjson, forwarding
POST /v1/chat/completions to the simulator, streams chunk by chunk). Served by:

- `uvicorn`:  uvicorn + httptools + uvloop, its ASGI request cycle (what Farebox used);
- `lean`:     uvicorn's connection handling with Farebox's LeanHttpProtocol
              (gateway/serving/protocol.py): the same app, on the lean request cycle;
- `granian`:  granian's Rust HTTP server, ASGI interface, uvloop, 1 worker, 1 runtime thread.
              granian is not a Farebox dependency: pass a Python that has it
              (`uv venv /tmp/granian-venv && uv pip install --python ... granian uvloop
              uvicorn aiohttp orjson`); without one it is skipped.

Each candidate runs as its own process on the same CPUs; rounds interleave them (a different
order each round) with wrk -c64 for non-stream and stream requests; CPU is read from /proc
for the server's process tree, as bench/targets.py does. The machine may be shared: compare
the ratios within one run, not the absolute figures across runs.

`--micro` takes the network, the upstream and the load generator out: it feeds an SDK-like
request (14 headers, a small JSON body) into each protocol class on a recording transport,
answered by a trivial app (7 headers and a 600-byte body), and reports CPU µs per request
and transport writes per answer — uvicorn's HttpToolsProtocol, Farebox's head-bounded
subclass of it, and LeanHttpProtocol. Far less noisy than the wrk runs on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import passthrough  # noqa: E402

# Set before the lifespan opens the session (the servers import this module as the app).
passthrough.UPSTREAM = os.environ.get("HTTP_LAYER_UPSTREAM", passthrough.UPSTREAM)
app = passthrough.app


async def lean_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await passthrough.app(scope, receive, send)


# LeanHttpProtocol serves what the app names; here, every request.
lean_app.serves_lean = lambda scope: True  # type: ignore[attr-defined]

CANDIDATES = ("uvicorn", "lean", "granian")


def serve(server: str, port: int) -> None:
    import uvicorn

    protocol: Any = "httptools"
    target: Any = app
    if server == "lean":
        sys.path.insert(0, str(BENCH.parent))
        from gateway.serving.protocol import LeanHttpProtocol

        protocol, target = LeanHttpProtocol, lean_app
    uvicorn.run(
        target,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http=protocol,
        lifespan="on",
        access_log=False,
        server_header=False,
        proxy_headers=False,
        log_level="warning",
    )


_MICRO_REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
    b"User-Agent: OpenAI/Python 1.99\r\nAccept: application/json\r\n"
    b"Content-Type: application/json\r\nAuthorization: Bearer sk-0123456789abcdef\r\n"
    b"X-Stainless-Lang: python\r\nX-Stainless-Package-Version: 1.99\r\n"
    b"X-Stainless-OS: Linux\r\nX-Stainless-Arch: x64\r\nX-Stainless-Runtime: CPython\r\n"
    b"X-Stainless-Runtime-Version: 3.11\r\nX-Stainless-Retry-Count: 0\r\n"
    b"Content-Length: 68\r\n\r\n"
    b'{"model":"sim-small","messages":[{"role":"user","content":"hello"}]}'
)
_MICRO_HEADERS = [
    (b"x-request-id", b"req_0123456789ab0000000001"),
    (b"x-farebox-route", b"bench"),
    (b"x-ratelimit-limit-requests", b"100000"),
    (b"x-ratelimit-remaining-requests", b"99999"),
    (b"x-farebox-deployment", b"sim@sim"),
    (b"x-farebox-attempts", b"1"),
    (b"content-type", b"application/json"),
]


async def _micro_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await receive()
    headers = [*_MICRO_HEADERS, (b"content-length", b"600")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"x" * 600})


_micro_app.serves_lean = lambda scope: True  # type: ignore[attr-defined]


class _Transport:
    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1

    def close(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 5555)}.get(name, default)


def micro(requests: int = 5000, rounds: int = 7) -> None:
    import asyncio

    import uvloop
    from uvicorn.config import Config
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.server import ServerState

    sys.path.insert(0, str(BENCH.parent))
    from gateway.api.http_protocol import BoundedHttpToolsProtocol
    from gateway.serving.protocol import LeanHttpProtocol

    async def one(cls: Any) -> tuple[float, float]:
        config = Config(
            _micro_app,
            http=cls,
            lifespan="off",
            proxy_headers=False,
            access_log=False,
            server_header=False,
            log_level="warning",
        )
        config.load()
        state = ServerState()
        protocol = cls(config=config, server_state=state, app_state={})
        transport = _Transport()
        protocol.connection_made(transport)
        started = time.process_time()
        for _ in range(requests):
            protocol.data_received(_MICRO_REQUEST)
            while state.tasks:  # noqa: ASYNC110 - the request's task, run to its end
                await asyncio.sleep(0)
        used = time.process_time() - started
        protocol.connection_lost(None)
        return used / requests * 1e6, transport.writes / requests

    async def all_rounds() -> None:
        classes = (HttpToolsProtocol, BoundedHttpToolsProtocol, LeanHttpProtocol)
        cpu: dict[str, list[float]] = {cls.__name__: [] for cls in classes}
        writes: dict[str, float] = {}
        for _ in range(rounds):
            for cls in classes:
                us, per = await one(cls)
                cpu[cls.__name__].append(us)
                writes[cls.__name__] = per
        print(f"median of {rounds} rounds of {requests} requests, in process:")
        for name, runs in cpu.items():
            print(
                f"{name:26} {statistics.median(runs):6.1f} us CPU/request  "
                f"{writes[name]:.0f} write(s)/answer"
            )

    uvloop.run(all_rounds())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--granian", default=os.environ.get("GRANIAN_PYTHON", ""))
    parser.add_argument("--micro", action="store_true", help="the protocols alone, in process")
    parser.add_argument("--serve", choices=("uvicorn", "lean"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return
    if args.micro:
        micro()
        return
    run(args)


def run(args: argparse.Namespace) -> None:
    import launch
    import wrk
    from targets import Proc, free_port

    wrk.ensure_wrk()
    launch.WORK.mkdir(exist_ok=True)
    sim_cpus, gw_cpus = launch.cpu_plan("auto")
    env = {**os.environ, "PYTHONPATH": str(BENCH.parent)}
    sim_port = free_port()
    sim, _ = launch.simulator(sim_port, env, sim_cpus)
    sim.start()
    sim.wait_ready(sim_port, "GET", "/_stats", None, 60)
    upstream = f"http://127.0.0.1:{sim_port}"
    server_env = {**env, "HTTP_LAYER_UPSTREAM": upstream}
    procs: dict[str, tuple[Proc, int]] = {}
    for name in CANDIDATES:
        port = free_port()
        if name == "granian":
            if not args.granian or not Path(args.granian).exists():
                print("granian: skipped (no --granian python)", flush=True)
                continue
            argv = [
                args.granian,
                "-m",
                "granian",
                "--interface",
                "asgi",
                "--loop",
                "uvloop",
                "--workers",
                "1",
                "--runtime-threads",
                "1",
                "--http",
                "1",
                "--no-ws",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
                "http_layer:app",
            ]
            proc = Proc(
                name,
                argv,
                {**server_env, "PYTHONPATH": str(BENCH)},
                launch.WORK / f"http-{name}.log",
                gw_cpus,
            )
            proc.cwd = BENCH
        else:
            argv = [launch.python(), str(Path(__file__)), "--serve", name, "--port", str(port)]
            proc = Proc(name, argv, server_env, launch.WORK / f"http-{name}.log", gw_cpus)
        proc.start()
        procs[name] = (proc, port)
    try:
        for proc, port in procs.values():
            proc.wait_ready(port, "GET", "/healthz", None, 60)
        results = measure(procs, args)
    finally:
        for proc, _ in procs.values():
            proc.stop()
        sim.stop()
    report(results, args)


def measure(
    procs: dict[str, Any], args: argparse.Namespace
) -> dict[tuple[str, str], list[tuple[float, float]]]:
    import subprocess

    import launch
    import wrk

    scripts = {
        mode: wrk.write_script(
            launch.WORK / f"http-{mode}.lua", launch.SIM_KEY, launch.FAST_MODEL, mode == "stream"
        )
        for mode in ("plain", "stream")
    }
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    names = list(procs)
    for name in names:  # warm-up: connections, caches, the session
        proc, port = procs[name]
        for script in scripts.values():
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            argv = wrk.wrk_argv(url, script, args.connections, 1)
            subprocess.run(argv, capture_output=True, text=True, check=False)
    for round_no in range(args.rounds):
        shift = round_no % len(names)
        for name in names[shift:] + names[:shift]:
            proc, port = procs[name]
            for mode, script in scripts.items():
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
                argv = wrk.wrk_argv(url, script, args.connections, args.seconds)
                proc.wait_idle()
                before = proc.cpu_seconds()
                out = subprocess.run(argv, capture_output=True, text=True, check=False)
                used = proc.cpu_seconds() - before
                parsed = wrk.parse(out.stdout)
                ok = parsed.requests - parsed.non2xx
                cpu_us = used / ok * 1e6 if ok else float("nan")
                results.setdefault((name, mode), []).append((parsed.ok_rps, cpu_us))
                print(
                    f"round {round_no + 1} {name:8} {mode:6} {parsed.ok_rps:8.0f} req/s "
                    f"{cpu_us:6.0f} us CPU/request (non-2xx {parsed.non2xx})",
                    flush=True,
                )
                time.sleep(0.2)
    return results


def report(
    results: dict[tuple[str, str], list[tuple[float, float]]], args: argparse.Namespace
) -> None:
    print(f"\nmedians over {args.rounds} rounds of {args.seconds:g} s, c{args.connections}:")
    print(f"{'server':8} {'mode':6} {'req/s':>8} {'CPU us/req':>10} {'req/s vs uvicorn':>17}")
    for mode in ("plain", "stream"):
        base = results.get(("uvicorn", mode))
        base_rps = statistics.median(r for r, _ in base) if base else None
        for name in CANDIDATES:
            runs = results.get((name, mode))
            if not runs:
                continue
            rps = statistics.median(r for r, _ in runs)
            cpu = statistics.median(c for _, c in runs)
            ratio = f"{rps / base_rps:.2f}x" if base_rps else "-"
            print(f"{name:8} {mode:6} {rps:8.0f} {cpu:10.0f} {ratio:>17}")


if __name__ == "__main__":
    main()
