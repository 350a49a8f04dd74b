"""Process settings from the environment: the only reader of os.environ (FAREBOX_*)."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FAREBOX_", extra="ignore")

    config: str = "config/gateway.yaml"
    master_key: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    log_level: str = "info"
    # Seconds uvicorn waits for in-flight requests after SIGTERM.
    graceful_shutdown_s: float = 30.0
