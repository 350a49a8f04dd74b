"""Settings from the environment without pydantic-settings (issue #25: ~6 MB per worker):
the same variable names, precedence and validation as before."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from gateway.settings import Settings


def test_farebox_variables_in_any_case_fill_their_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAREBOX_PORT", "9001")
    monkeypatch.setenv("farebox_batch_runner", "false")
    monkeypatch.setenv("FAREBOX_METRICS_ON_API_PORT", "open")
    monkeypatch.setenv("FAREBOX_REDIS_URL", "redis://r:6379/0")
    monkeypatch.setenv("FAREBOX_NOT_A_SETTING", "ignored")
    settings = Settings()
    assert settings.port == 9001 and settings.batch_runner is False
    assert settings.metrics_on_api_port == "open" and settings.redis_url == "redis://r:6379/0"
    assert settings.workers == 1 and settings.master_key is None  # defaults


def test_otel_names_are_read_in_their_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "edge")
    assert Settings().otel_endpoint == "http://collector:4318"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4318/v1/traces")
    settings = Settings()
    assert settings.otel_endpoint == "http://traces:4318/v1/traces"
    assert settings.otel_service_name == "edge"


def test_keyword_arguments_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAREBOX_PORT", "9001")
    monkeypatch.setenv("FAREBOX_MASTER_KEY", "from-env")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    settings = Settings(port=7, master_key=None, otel_endpoint="http://mine:4318")
    assert (settings.port, settings.master_key) == (7, None)
    assert settings.otel_endpoint == "http://mine:4318"


def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAREBOX_PORT", "eighty")
    with pytest.raises(ValidationError):
        Settings()
    monkeypatch.delenv("FAREBOX_PORT")
    monkeypatch.setenv("FAREBOX_FILES_BACKEND", "ftp")
    with pytest.raises(ValidationError):
        Settings()
    monkeypatch.delenv("FAREBOX_FILES_BACKEND")
    with pytest.raises(ValidationError):
        Settings(files_s3_part_bytes=1024)  # below S3's minimum part


def test_reading_settings_does_not_import_pydantic_settings() -> None:
    code = (
        "import sys, gateway.settings as s; s.Settings(); print('pydantic_settings' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
