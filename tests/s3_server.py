"""A local S3-compatible server for the S3 files backend's tests: moto's threaded server on
a free loopback port, and a plain boto3 client to look inside its buckets.

moto accepts any credentials; the gateway's S3 client finds them through the standard AWS
chain, so `aws_env()` puts test ones in the environment (and keeps the machine's own AWS
config and instance metadata out) for as long as a gateway or storage uses the server.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

REGION = "us-east-1"
TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "farebox-test",
    "AWS_SECRET_ACCESS_KEY": "farebox-test-secret",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_CONFIG_FILE": "/nonexistent/farebox-test-aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/farebox-test-aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@dataclass(frozen=True)
class S3Server:
    url: str

    def client(self) -> Any:
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=TEST_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=TEST_ENV["AWS_SECRET_ACCESS_KEY"],
        )

    def new_bucket(self) -> str:
        name = f"farebox-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str) -> list[str]:
        listed = self.client().list_objects_v2(Bucket=bucket)
        return sorted(o["Key"] for o in listed.get("Contents", []))

    def open_uploads(self, bucket: str) -> list[dict[str, Any]]:
        """Multipart uploads started and neither completed nor aborted."""
        return list(self.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []))

    def parts(self, bucket: str, key: str, upload_id: str) -> list[dict[str, Any]]:
        got = self.client().list_parts(Bucket=bucket, Key=key, UploadId=upload_id)
        return list(got.get("Parts", []))


@contextmanager
def aws_env(**overrides: str) -> Iterator[None]:
    """The test credentials (and `overrides`) in the environment, restored afterwards."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {**TEST_ENV, **overrides}.items():
            if value:
                patch.setenv(name, value)
            else:
                patch.delenv(name, raising=False)
        yield


@contextmanager
def s3_server() -> Iterator[S3Server]:
    # Port 0: the OS picks a free one, read back once the server listens.
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield S3Server(f"http://{host}:{port}")
    finally:
        server.stop()
