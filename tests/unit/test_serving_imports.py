"""An idle serving worker has not imported FastAPI or Starlette (issue 25, item 3): HotPath
answers /v1/* and the probes itself and builds the FastAPI app on the first request that
needs it. Checked in a fresh interpreter, since the test process has FastAPI loaded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import asyncio, http.client, json, socket, sys, threading, time
import uvicorn
from gateway.app import create_asgi
from gateway.config.loading import parse_config
from gateway.serving.protocol import LeanHttpProtocol
from gateway.settings import Settings

YAML = '''
auth: none
providers:
  p: {kind: serverless, protocol: openai, api_base: "http://127.0.0.1:9/v1"}
deployments:
  d@p: {provider: p, model: m}
routes:
  chat: {targets: [d@p]}
'''
tmp = sys.argv[1]
settings = Settings(
    master_key=None, metrics_port=0, ledger_enabled=False, batch_runner=False,
    journal_enabled=False, database_url=f"sqlite+aiosqlite:///{tmp}/farebox.db",
    spool_dir=f"{tmp}/spool",
)
app = create_asgi(settings, parse_config(YAML, "t.yaml", {}))
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
sock.bind(("127.0.0.1", 0))
server = uvicorn.Server(uvicorn.Config(
    app, loop="uvloop", http=LeanHttpProtocol, log_level="warning", lifespan="on"))
thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
thread.start()
while not server.started:
    if not thread.is_alive():
        sys.exit("server did not start")
    time.sleep(0.01)  # poll: a condition wait

def request(method, path, body=None):
    conn = http.client.HTTPConnection(*sock.getsockname(), timeout=10)
    conn.request(method, path, body=body, headers={"content-type": "application/json"})
    response = conn.getresponse()
    answer = (response.status, response.getheader("x-request-id"), response.read())
    conn.close()
    return answer

def loaded():
    return sorted(m for m in ("fastapi", "starlette") if m in sys.modules)

seen = {"after_start": loaded()}
chat = b'{"model":"nope","messages":[{"role":"user","content":"hi"}]}'
status, rid, _ = request("POST", "/v1/chat/completions", chat)
seen["v1"] = [status, rid is not None]
status, rid, _ = request("GET", "/healthz")
seen["healthz"] = [status, rid is not None]
status, _, body = request("GET", "/readyz")
seen["readyz"] = [status, json.loads(body)["status"]]
seen["after_v1"] = loaded()
status, rid, _ = request("GET", "/no/such/path")
seen["unknown"] = [status, rid is not None]
seen["after_unknown"] = loaded()
server.should_exit = True
thread.join(timeout=15)
print("RESULT " + json.dumps(seen))
"""


def test_an_idle_serving_worker_has_not_imported_fastapi(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, done.stderr[-3000:]
    seen = json.loads(line.removeprefix("RESULT "))
    assert seen["after_start"] == []
    assert seen["v1"] == [404, True]  # model not found: answered by the hot path
    assert seen["healthz"] == [200, True]
    assert seen["readyz"] == [200, "ready"]
    assert seen["after_v1"] == [], "a /v1 request or a probe loaded FastAPI"
    # The first request HotPath does not answer builds the FastAPI app: its 404 shape
    # still carries a request id.
    assert seen["unknown"] == [404, True]
    assert seen["after_unknown"] == ["fastapi", "starlette"]
