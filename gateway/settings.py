"""Process settings from the environment: the only reader of os.environ (FAREBOX_*).

A pydantic model (pydantic is loaded for the YAML's schema anyway) filled from the
environment by `_from_environment`, not pydantic-settings: that package and its imports cost
every serving worker ~6 MB of resident memory (issue #25) for what is, here, a loop over
os.environ. The behaviour is pydantic-settings' as this class used it: `FAREBOX_<FIELD>`
(any case), a field's validation aliases as variable names of their own (the OTEL_* ones),
keyword arguments over the environment over the defaults, unknown names ignored.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

ENV_PREFIX = "FAREBOX_"


class Settings(BaseModel):
    model_config = ConfigDict(extra="ignore")

    def __init__(self, **values: Any) -> None:
        super().__init__(**{**_from_environment(set(values)), **values})

    config: str = "config/gateway.yaml"
    master_key: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    log_level: str = "info"
    # After SIGTERM: how long requests in flight (streams included) get to finish. What is
    # still running then is ended with an error (ledger error class `shutdown`) and the
    # ledger is flushed; with nothing in flight the process exits at once
    # (gateway/serving/server.py).
    graceful_shutdown_s: float = 30.0
    # /metrics has its own listener, so the API port never shows spend and traffic to
    # whoever can reach it. 9464 is the port Prometheus' port registry gives the
    # OpenTelemetry Prometheus exporter: the usual "application metrics" port, clear of the
    # API (8080), Prometheus itself (9090) and the node exporter (9100). 0: no listener.
    metrics_port: int = 9464
    # Bind address of the metrics listener (default: FAREBOX_HOST).
    metrics_host: str | None = None
    # Whether the API port serves /metrics as well: off (404), admin (FAREBOX_MASTER_KEY as
    # a bearer token) or open (anyone who reaches the port; the old behaviour).
    metrics_on_api_port: Literal["off", "admin", "open"] = "off"
    # /readyz pings the ledger database in the background this often, each ping bounded by
    # the timeout: a probe reads the last result and never waits on the database.
    db_ping_interval_s: float = 5.0
    db_ping_timeout_s: float = 2.0
    # SQLite is the zero-setup default; production points this at Postgres (postgresql+asyncpg://).
    database_url: str = "sqlite+aiosqlite:///var/farebox.db"
    # Shared state across replicas (circuit breakers); in-process when unset. redis:// or
    # rediss:// (one node), redis+cluster://h:p,h:p (Redis Cluster), redis+sentinel://h:p,h:p/
    # service[/db] (Sentinel): gateway/runtime/redis_url.py.
    redis_url: str | None = None
    # Ledger batches that could not be written are appended here and replayed on recovery.
    spool_dir: str = "var/spool"
    # Uploaded files' bytes (`/v1/files`, gateway/files/storage.py); default: a `files`
    # directory beside spool_dir (var/files). Their metadata is in the ledger database.
    files_dir: str | None = None
    # Largest file one upload may hold (a 413 past it), and for purpose `batch` the most
    # requests (lines) a file may hold (a 400 past it).
    files_max_bytes: int = 200 * 1024 * 1024
    files_max_lines: int = 50_000
    # Where the bytes go: `local` (files_dir) or `s3`, any S3-compatible object storage (AWS
    # S3, MinIO, R2, ...; needs the `s3` extra). Credentials come from the standard AWS chain
    # (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an instance or pod role).
    files_backend: Literal["local", "s3"] = "local"
    files_s3_bucket: str | None = None
    # Prepended to every object key ("farebox/files/" → farebox/files/file-…).
    files_s3_prefix: str = ""
    # For storage other than AWS (MinIO, R2, a test server); unset: AWS S3 itself.
    files_s3_endpoint_url: str | None = None
    # Unset: the AWS chain's region (AWS_REGION, AWS_DEFAULT_REGION, the profile's).
    files_s3_region: str | None = None
    # An upload goes to S3 in parts of this size (S3's minimum is 5 MiB): the most a stream
    # holds in memory at once.
    files_s3_part_bytes: int = Field(default=8 * 1024 * 1024, ge=5 * 1024 * 1024)
    # How often expired files (`expires_after`) lose their bytes and rows; an expired file
    # is a 404 at once, whether purged yet or not.
    files_purge_interval_s: float = 300.0
    # Whether this process runs batches (gateway/batch/runner.py). Any number of replicas
    # may: each claims batches from the database. Off for serving-only replicas.
    batch_runner: bool = True
    # Off only for benchmarks comparing the ledger's cost; production always meters.
    ledger_enabled: bool = True
    ledger_batch_rows: int = 500
    # The most a batch takes from a backlog (0: 8 x ledger_batch_rows), see LedgerWriter.
    ledger_max_batch_rows: int = 0
    ledger_max_delay_ms: int = 200
    # Days of raw requests/attempts kept on a Postgres ledger (0: forever). Older day
    # partitions are dropped once their rollups are verified; reports of those months read
    # the rollups (gateway/ledger/retention.py). The current month always stays.
    ledger_retention_days: int = Field(default=0, ge=0)
    # How often (seconds) a Postgres ledger's compactor adds the writer's pending rows to
    # the rollups (gateway/ledger/rollup_compactor.py). The writer no longer upserts the
    # rollups per batch (that held it under issue 26's 20,000 attempts/s); a longer interval
    # means bigger, cheaper compactions but a bigger backlog. Reports never see it: they
    # flush first. 2 s keeps the backlog a few seconds of writes.
    ledger_rollup_interval_s: float = Field(default=2.0, gt=0)
    ledger_max_queue_rows: int = 100_000
    # The crash-safe attempt journal (gateway/ledger/journal.py): every upstream call is
    # written here before it starts and when its request ends, so a killed process loses no
    # row. Default: <spool_dir>/journal. Keep it on a volume that outlives the container.
    journal_enabled: bool = True
    journal_dir: str | None = None
    # How often the journal is fsync'd (a lost machine); 0 = never (a killed process is
    # still covered: the mapped pages are the kernel's). Every second by default: on this
    # machine's disk an fsync every 10-50 ms stalled the hot path (pages under writeback)
    # and cost a fifth of the throughput; bench/JOURNAL.md has the figures.
    journal_fsync_ms: float = 1000.0
    # At shutdown, how long the ledger may spend writing what is queued to the database;
    # what is left then (a hung database) goes to the spool. Helm's grace period covers it.
    ledger_close_timeout_s: float = 10.0
    # Prices in USD per 1M tokens with effective dates; see config/prices.yaml.
    prices_file: str = "config/prices.yaml"
    # How often each replica checks the YAML's drill schedules (the lock holder starts them).
    drill_schedule_interval_s: float = 30.0
    # One JSON line per request on the `farebox.requests` logger (stdout by default).
    request_log: bool = True
    # Per-request Prometheus series; off only for benchmarks measuring their cost.
    metrics_enabled: bool = True
    # OpenTelemetry traces (OTLP/HTTP) go here; unset, tracing is off and not even imported.
    # The standard OTEL_* names, so the exporter's other OTEL_EXPORTER_OTLP_* settings apply.
    otel_endpoint: str | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT", "otel_endpoint"
        ),
    )
    otel_service_name: str = Field(
        default="farebox", validation_alias=AliasChoices("OTEL_SERVICE_NAME", "otel_service_name")
    )


def _from_environment(given: set[str]) -> dict[str, Any]:
    """The environment's values by the name (or alias) the model validates them under, for
    the fields not `given` as keyword arguments (by name or by any alias)."""
    env = {name.lower(): value for name, value in os.environ.items()}
    found: dict[str, Any] = {}
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        choices = alias.choices if isinstance(alias, AliasChoices) else []
        if name in given or any(choice in given for choice in choices):
            continue
        if isinstance(alias, AliasChoices):
            # pydantic-settings: each choice is a variable name, without the prefix.
            for choice in alias.choices:
                if isinstance(choice, str) and choice.lower() in env:
                    found[choice] = env[choice.lower()]
                    break
        elif (ENV_PREFIX + name).lower() in env:
            found[name] = env[(ENV_PREFIX + name).lower()]
    return found
