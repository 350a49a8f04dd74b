"""Choosing the files backend from settings (gateway/state.py build_files) and reading the
upload's `expires_after` fields (gateway/files/store.py), without a server."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.errors import InvalidRequest
from gateway.files.storage import LocalDirectory
from gateway.files.storage_s3 import S3Storage
from gateway.files.store import check_expires_after
from gateway.settings import Settings
from gateway.state import build_files


def repository() -> Any:
    return SimpleNamespace(engine=None)  # build_files only hands the engine on


def test_settings_pick_the_backend(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    local = build_files(Settings(files_dir=str(tmp_path)), repository())
    assert isinstance(local.storage, LocalDirectory) and local.storage.directory == tmp_path

    for name, value in {
        "FAREBOX_FILES_BACKEND": "s3",
        "FAREBOX_FILES_S3_BUCKET": "farebox-files",
        "FAREBOX_FILES_S3_PREFIX": "gw/",
        "FAREBOX_FILES_S3_ENDPOINT_URL": "http://127.0.0.1:9",
        "FAREBOX_FILES_S3_REGION": "eu-west-3",
        "FAREBOX_FILES_S3_PART_BYTES": str(16 * 1024 * 1024),
        "FAREBOX_FILES_PURGE_INTERVAL_S": "60",
    }.items():
        monkeypatch.setenv(name, value)
    store = build_files(Settings(), repository())
    storage = store.storage
    assert isinstance(storage, S3Storage)
    assert (storage.bucket, storage.prefix, storage.part_bytes) == (
        "farebox-files",
        "gw/",
        16 * 1024 * 1024,
    )
    assert storage.client.meta.region_name == "eu-west-3"
    assert storage.describe() == "s3://farebox-files/gw/ at http://127.0.0.1:9"
    assert store.purge_interval_s == 60
    asyncio.run(store.close())


def test_s3_settings_that_cannot_work_fail_at_start_up() -> None:
    with pytest.raises(ValueError, match="FAREBOX_FILES_S3_BUCKET"):
        build_files(Settings(files_backend="s3"), repository())
    with pytest.raises(ValueError, match="5242880"):
        Settings(files_backend="s3", files_s3_bucket="b", files_s3_part_bytes=1024 * 1024)
    with pytest.raises(ValueError, match="local"):
        Settings(files_backend="gcs")  # type: ignore[arg-type]


def test_the_s3_backend_without_its_extra_names_it() -> None:
    script = textwrap.dedent(
        """
        import sys
        sys.modules["boto3"] = None
        from types import SimpleNamespace
        from gateway.extras import MissingExtra
        from gateway.settings import Settings
        from gateway.state import build_files
        try:
            build_files(
                Settings(files_backend="s3", files_s3_bucket="b"), SimpleNamespace(engine=None)
            )
        except MissingExtra as exc:
            print(exc.extra, exc)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("s3 "), done.stdout
    assert "pip install 'farebox[s3]'" in done.stdout


def test_expires_after_fields() -> None:
    assert check_expires_after(None, None) is None
    assert check_expires_after("created_at", "3600") == 3600
    assert check_expires_after("created_at", "2592000") == 2_592_000
    for anchor, seconds, param in (
        ("created_at", "3599", "seconds"),
        ("created_at", "2592001", "seconds"),
        ("created_at", "1e4", "seconds"),
        ("created_at", "", "seconds"),
        ("last_active_at", "3600", "anchor"),
        (None, "3600", "anchor"),
        ("created_at", None, "seconds"),
    ):
        with pytest.raises(InvalidRequest) as caught:
            check_expires_after(anchor, seconds)
        assert caught.value.param == f"expires_after.{param}"
