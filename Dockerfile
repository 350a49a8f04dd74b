# syntax=docker/dockerfile:1
# Farebox gateway image.
#   docker build -t farebox:0.1.0 .
#   docker run --rm -p 8080:8080 -v farebox-var:/var/lib/farebox \
#     -e FAREBOX_MASTER_KEY=... -e FAREBOX_DATABASE_URL=postgresql+asyncpg://... farebox:0.1.0
# Migrations never run at start-up (several replicas would race): run `farebox migrate` once
# per release (the Helm chart's pre-install/pre-upgrade Job does).

ARG PYTHON_VERSION=3.11

# --- build: resolve the locked dependencies with uv, then install the project as a wheel ---
FROM ghcr.io/astral-sh/uv:0.13.8 AS uv

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/farebox
WORKDIR /src
# Dependencies first, in their own layer: it is rebuilt only when the lock changes. The image
# carries every optional extra (vertex, semantic-cache, otel, s3), so any config runs on it.
COPY pyproject.toml uv.lock README.md ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --all-extras --no-install-project
COPY gateway/ gateway/
COPY routing/ routing/
COPY migrations/ migrations/
COPY alembic.ini ./
# Not editable: the venv must not point back at /src, which the runtime stage does not have.
# The wheel carries migrations/ and alembic.ini into /opt/farebox/share/farebox.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --all-extras --no-editable

# --- run: slim Python, the venv, the shipped config; no compiler, no uv, no source tree ---
FROM python:${PYTHON_VERSION}-slim-bookworm AS run
ARG FAREBOX_UID=10001
RUN groupadd --system --gid "${FAREBOX_UID}" farebox \
    && useradd --system --uid "${FAREBOX_UID}" --gid farebox --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin farebox \
    && install -d -o farebox -g farebox -m 0750 /var/lib/farebox
COPY --from=build /opt/farebox /opt/farebox
WORKDIR /app
# prices.yaml (the price book) and the example configs; mount your routing YAML at
# /etc/farebox/gateway.yaml (the chart mounts its ConfigMap there).
COPY config/ config/
# Read-only root filesystem friendly: the only writes go to /var/lib/farebox (mount a volume:
# the ledger spool must outlive the container) and /tmp (multiprocess metrics; an emptyDir).
ENV PATH=/opt/farebox/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LITELLM_LOCAL_MODEL_COST_MAP=True \
    FAREBOX_HOST=0.0.0.0 \
    FAREBOX_PORT=8080 \
    FAREBOX_CONFIG=/etc/farebox/gateway.yaml \
    FAREBOX_PRICES_FILE=/app/config/prices.yaml \
    FAREBOX_SPOOL_DIR=/var/lib/farebox/spool \
    FAREBOX_DATABASE_URL=sqlite+aiosqlite:////var/lib/farebox/farebox.db
VOLUME ["/var/lib/farebox"]
# Numeric, so Kubernetes can check runAsNonRoot without reading /etc/passwd.
USER ${FAREBOX_UID}:${FAREBOX_UID}
EXPOSE 8080 9464
# Liveness only (the process answers); readiness is /readyz, for the load balancer.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('FAREBOX_PORT', '8080')}/healthz\", timeout=2)"]
# Exec form: `farebox serve` is PID 1 and gets SIGTERM (drain) and SIGHUP (reload) itself.
ENTRYPOINT ["farebox"]
CMD ["serve"]
STOPSIGNAL SIGTERM
