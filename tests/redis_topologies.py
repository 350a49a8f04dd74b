"""Private Redis topologies beyond one node, for the integration tests: a 3-master Redis Cluster
and a Sentinel set (one master, one replica, three sentinels).

Built from tests/services.py's RedisServer (free 127.0.0.1 ports, temp directories, no
persistence, stopped at interpreter exit). Each has the single server's test interface —
`url` (the scheme Farebox reads: redis+cluster:// or redis+sentinel://), `start`, `stop`,
`close` — so a test written for one node runs on these unchanged (tests/conftest.py's
`redis_server` fixture is parametrized over them), and `sync_client(url)` gives tests a plain
client for any of the three URL forms.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import redis

from gateway.runtime.redis_url import CLUSTER, SINGLE, parse_redis_url
from tests.services import READY_TIMEOUT_S, RedisServer, _wait, free_port

SERVICE = "farebox"  # the Sentinel service name the tests use

# A test marked so runs once on one node and once on the cluster, the same code: the proof
# that Farebox behaves the same on a Redis Cluster as on one node. Unmarked tests get one
# node (tests/conftest.py's `redis_server`).
on_every_topology = pytest.mark.parametrize("redis_server", ["node", "cluster"], indirect=True)


def _info(port: int, section: str) -> dict[str, str]:
    """INFO (or CLUSTER INFO when section is "cluster-info") of a local server, {} if it does
    not answer."""
    client = redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1)
    try:
        if section == "cluster-info":  # redis-py parses it into a dict
            info: dict[str, Any] = client.execute_command("CLUSTER INFO")  # type: ignore[no-untyped-call]
            return {k: str(v) for k, v in info.items()}
        return {k: str(v) for k, v in client.info(section).items()}
    except (redis.RedisError, OSError):
        return {}
    finally:
        client.close()


class RedisCluster:
    """Three masters, no replicas, slots split evenly (redis-cli --cluster create)."""

    def __init__(self, base_dir: Path, size: int = 3) -> None:
        self.base_dir = base_dir
        self.nodes = []
        for i in range(size):
            node_dir = base_dir / f"node{i}"
            node_dir.mkdir()
            args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            # A node that stops answering is failed by the others after this long; short, so
            # a restarted cluster settles quickly.
            args += ["--cluster-node-timeout", "1000"]
            # The bus port defaults to port + 10000, past 65535 for most free ports: pick one.
            args += ["--cluster-port", str(free_port())]
            self.nodes.append(RedisServer(node_dir, free_port(), args))
        self.port = self.nodes[0].port  # a start-up node, for tests that dial one port
        self._created = False
        self._closed = False

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        if not self._created:
            cli = shutil.which("redis-cli")
            if cli is None:
                raise RuntimeError("redis-cli not found (it comes with redis-server)")
            hosts = [f"127.0.0.1:{n.port}" for n in self.nodes]
            subprocess.run(
                [cli, "--cluster", "create", *hosts, "--cluster-replicas", "0", "--cluster-yes"],
                check=True,
                capture_output=True,
                timeout=READY_TIMEOUT_S,
            )
            self._created = True
        # Restarted nodes keep their slots (nodes.conf) but lose their data, as one
        # restarted test server does.
        _wait(self._ok, "redis cluster_state:ok on every node")

    def _ok(self) -> bool:
        return all(_info(n.port, "cluster-info").get("cluster_state") == "ok" for n in self.nodes)

    def is_running(self) -> bool:
        return all(n.is_running() for n in self.nodes)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for node in self.nodes:
            node.close()
        shutil.rmtree(self.base_dir, ignore_errors=True)


def start_redis_cluster(tmp_dir: Path | None = None) -> RedisCluster:
    base = Path(tempfile.mkdtemp(prefix="farebox-rcluster-", dir=tmp_dir))
    cluster = RedisCluster(base)
    atexit.register(cluster.close)
    cluster.start()
    return cluster


class SentinelSet:
    """A master, one replica of it, and three sentinels watching it (quorum 2) under the
    service name SERVICE. `master`/`replica` are the servers as started: after a failover the
    replica is the master (see `master_port`)."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        (base_dir / "master").mkdir()
        (base_dir / "replica").mkdir()
        self.master = RedisServer(base_dir / "master", free_port())
        self.replica = RedisServer(
            base_dir / "replica",
            free_port(),
            ["--replicaof", "127.0.0.1", str(self.master.port)],
        )
        self.sentinels: list[RedisServer] = []
        for i in range(3):
            sdir = base_dir / f"sentinel{i}"
            sdir.mkdir()
            port = free_port()
            conf = sdir / "sentinel.conf"  # sentinels rewrite their own config: a file each
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.master.port} 2\n"
                # Failure detected after 1 s, so a failover test is over in seconds.
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 5000\n"
            )
            self.sentinels.append(_SentinelServer(sdir, port, conf))
        self._closed = False

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def start(self) -> None:
        self.master.start()
        self.replica.start()
        _wait(
            lambda: _info(self.replica.port, "replication").get("master_link_status") == "up",
            "the replica in sync with the master",
        )
        for sentinel in self.sentinels:
            sentinel.start()
        # A failover needs the sentinels to know the replica and each other (they find both
        # through the master, every couple of seconds).
        _wait(self._watching, "three sentinels that know the replica and each other")

    def _watching(self) -> bool:
        for sentinel in self.sentinels:
            client = redis.Redis(port=sentinel.port, socket_timeout=1)
            try:
                state: Any = client.sentinel_master(SERVICE)
                if int(state["num-other-sentinels"]) < 2 or int(state["num-slaves"]) < 1:
                    return False
            except (redis.RedisError, OSError):
                return False
            finally:
                client.close()
        return True

    def master_port(self) -> int | None:
        """The master's port as a sentinel reports it now (None if none answers)."""
        for sentinel in self.sentinels:
            client = redis.Redis(port=sentinel.port, socket_timeout=1)
            try:
                with contextlib.suppress(redis.RedisError, OSError, TypeError):
                    address: Any = client.sentinel_get_master_addr_by_name(SERVICE)
                    _, port = address
                    return int(port)
            finally:
                client.close()
        return None

    def stop(self) -> None:
        for server in (*self.sentinels, self.replica, self.master):
            server.stop()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for server in (*self.sentinels, self.replica, self.master):
            server.close()
        shutil.rmtree(self.base_dir, ignore_errors=True)


class _SentinelServer(RedisServer):
    """redis-server in sentinel mode on its own config file."""

    def __init__(self, base_dir: Path, port: int, conf: Path) -> None:
        super().__init__(base_dir, port, ["--sentinel"])
        self.conf = conf

    def start(self) -> None:
        if self.is_running():
            return
        # The config file must come first on the command line; the rest as for any server.
        self._proc = subprocess.Popen(
            [self.binary, str(self.conf), "--sentinel", "--logfile", str(self.log_file)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait(self._ping, f"sentinel on port {self.port}")


def start_sentinel_set(tmp_dir: Path | None = None) -> SentinelSet:
    base = Path(tempfile.mkdtemp(prefix="farebox-rsentinel-", dir=tmp_dir))
    sentinels = SentinelSet(base)
    atexit.register(sentinels.close)
    sentinels.start()
    return sentinels


def sync_client(url: str) -> Any:
    """A blocking redis-py client for a single-node, cluster or Sentinel URL (tests inspect
    and clean Redis with it)."""
    target = parse_redis_url(url)
    if target.kind == SINGLE:
        return redis.Redis.from_url(url)
    if target.kind == CLUSTER:
        nodes = [redis.cluster.ClusterNode(h, p) for h, p in target.hosts]  # type: ignore[no-untyped-call]
        return redis.RedisCluster(startup_nodes=nodes)
    sentinel = redis.Sentinel(list(target.hosts), socket_timeout=2)  # type: ignore[no-untyped-call]
    return sentinel.master_for(target.service, db=target.db, socket_timeout=2)  # type: ignore[no-untyped-call]
