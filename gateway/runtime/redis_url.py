"""What a Redis URL asks for: one node, a Redis Cluster, or a master found through Sentinel.

Farebox takes one setting, FAREBOX_REDIS_URL, and its scheme says which topology it names:

- `redis://[user:password@]host:port[/db]` and `rediss://…` (TLS): one node, as redis-py's
  own `from_url` reads it (query options included).
- `redis+cluster://[user:password@]host:port[,host:port…]` and `rediss+cluster://…`: a
  Redis Cluster. The hosts are start-up nodes only; the client learns the whole topology from
  any one of them that answers. A cluster has no database numbers, so a path other than `/`
  or `/0` is an error.
- `redis+sentinel://[user:password@]host:port[,host:port…]/service_name[/db]` and
  `rediss+sentinel://…`: the master of `service_name`, as the sentinels report it; after a
  failover new connections go to the promoted replica. The user and password are the Redis
  servers' (master and replicas); sentinels that require their own password take it as the
  query option `sentinel_password`.

The parsing lives here, apart from the client (gateway/runtime/redis.py), so it is checked
without a server (tests/unit/test_redis_url.py) and an unusable URL fails at start-up with a
message naming the problem instead of at the first request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

SINGLE, CLUSTER, SENTINEL = "single", "cluster", "sentinel"
DEFAULT_PORT = {SINGLE: 6379, CLUSTER: 6379, SENTINEL: 26379}
# Query options a cluster or sentinel URL may carry (passed on to redis-py's connections as
# they are): TLS material and a client name. Anything else is refused rather than ignored.
_OPTIONS = frozenset(
    {"ssl_ca_certs", "ssl_cert_reqs", "ssl_certfile", "ssl_keyfile", "client_name"}
)


@dataclass(frozen=True)
class RedisTarget:
    kind: str  # SINGLE, CLUSTER or SENTINEL
    url: str  # as given (SINGLE hands it to redis-py's own from_url)
    hosts: tuple[tuple[str, int], ...] = ()
    username: str | None = None
    password: str | None = None
    tls: bool = False
    db: int = 0
    service: str = ""  # SENTINEL: the monitored master's name
    sentinel_password: str | None = None
    options: dict[str, str] = field(default_factory=dict)


def parse_redis_url(url: str) -> RedisTarget:
    """The topology `url` names; ValueError (saying what is wrong) for one Farebox cannot use."""
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise ValueError(f"not a Redis URL (no scheme): {_safe(url)}")
    base, _, flavour = scheme.lower().partition("+")
    if base not in ("redis", "rediss", "unix") or flavour not in ("", "cluster", "sentinel"):
        raise ValueError(
            f"unknown Redis URL scheme {scheme!r}: use redis://, rediss://, redis+cluster://, "
            "rediss+cluster://, redis+sentinel:// or rediss+sentinel://"
        )
    if not flavour:
        return RedisTarget(SINGLE, url)
    if base == "unix":
        raise ValueError(f"{scheme}:// needs TCP hosts, not a unix socket")
    kind = CLUSTER if flavour == "cluster" else SENTINEL
    parts = urlsplit(url)
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username, password = _credentials(userinfo)
    hosts = tuple(_host_port(h, DEFAULT_PORT[kind]) for h in hostlist.split(",") if h)
    if not hosts:
        raise ValueError(f"{scheme}:// names no host: {_safe(url)}")
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = sorted(set(options) - _OPTIONS - {"sentinel_password"})
    if unknown:
        raise ValueError(f"unsupported option(s) in a {scheme}:// URL: {', '.join(unknown)}")
    path = [unquote(p) for p in parts.path.split("/") if p]
    if kind == CLUSTER:
        if path not in ([], ["0"]):
            raise ValueError("a Redis Cluster has only database 0: drop the path from the URL")
        return RedisTarget(kind, url, hosts, username, password, base == "rediss", options=options)
    if not path or len(path) > 2:
        raise ValueError(
            "a Sentinel URL names the master's service: redis+sentinel://host:port/service[/db]"
        )
    try:
        db = int(path[1]) if len(path) == 2 else 0
    except ValueError:
        raise ValueError(f"not a database number: {path[1]!r}") from None
    return RedisTarget(
        kind,
        url,
        hosts,
        username,
        password,
        base == "rediss",
        db=db,
        service=path[0],
        sentinel_password=options.pop("sentinel_password", None),
        options=options,
    )


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    if not userinfo:
        return None, None
    user, colon, password = userinfo.partition(":")
    return (unquote(user) or None), (unquote(password) if colon else None)


def _host_port(text: str, default_port: int) -> tuple[str, int]:
    if text.startswith("["):  # IPv6: [::1]:7000
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = text.partition(":")
    if not host:
        raise ValueError(f"empty host in {text!r}")
    try:
        return host, int(port) if port else default_port
    except ValueError:
        raise ValueError(f"not a port number in {text!r}") from None


def _safe(url: str) -> str:
    """`url` without its password, for error messages and logs."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, hosts = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}{sep}{userinfo.partition(':')[0]}:***@{hosts}"
