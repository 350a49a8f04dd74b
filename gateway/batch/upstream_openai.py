"""A provider's OpenAI-protocol Batch API (`/files` + `/batches` under its api_base), as
:class:`gateway.batch.upstream_types.ProviderBatches`.

submit: the lines are uploaded as one JSONL file (purpose `batch`), written line by line into
the multipart body (its length computed up front, so the upload has a Content-Length and no
whole-file bytes object is ever built), then `POST /batches` with
`metadata: {"farebox_batch_id": ...}`. That metadata is how `find` recognises a batch made for
a Farebox batch by a gateway killed before it saved the upstream id. Results are read from
the output and error files, streamed and parsed line by line.

Auth, base URL and headers are the deployment's :class:`ProviderEndpoint`, exactly as live
calls use them; provider errors become :class:`UpstreamError` (the live path's kinds).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import aiohttp
import orjson
from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import Payload

from gateway.batch.upstream_types import (
    TERMINAL,
    UpstreamLine,
    UpstreamResult,
    UpstreamState,
)
from gateway.observability.telemetry import upstream_headers
from gateway.providers.base import CONNECT, CUT, MALFORMED, STATUS, TIMEOUT, UpstreamError
from gateway.providers.openai_compat import ProviderEndpoint, _status_error
from routing.model import DeploymentSpec

log = logging.getLogger(__name__)

# The metadata key that ties an upstream batch to the Farebox batch it runs.
FAREBOX_BATCH_ID = "farebox_batch_id"
# The OpenAI batch endpoints Farebox sends upstream.
ENDPOINTS = frozenset({"/v1/chat/completions", "/v1/responses", "/v1/embeddings"})

# Control calls (create, poll, list, cancel) are small; transfers (the input upload, the
# result files) may be hundreds of MB, so only a stalled read bounds them.
CONTROL_TIMEOUT = aiohttp.ClientTimeout(total=60, sock_connect=10)
TRANSFER_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300)

_CHUNK = 64 * 1024


class JsonlPayload(Payload):
    """The batch input file, encoded line by line as it is sent.

    Each line is encoded twice (once to size the body, once to send it) rather than kept:
    orjson is fast, and the file never sits in memory whole."""

    _autoclose = True

    def __init__(self, lines: Sequence[UpstreamLine], endpoint: str, filename: str):
        super().__init__(lines, content_type="application/jsonl", filename=filename)
        self._lines = lines
        self._url = endpoint
        self._size = sum(len(self._encode(line)) for line in lines)

    def _encode(self, line: UpstreamLine) -> bytes:
        record: dict[str, Any] = {
            "custom_id": line.custom_id,
            "method": "POST",
            "url": self._url,
            "body": line.body,
        }
        return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)

    async def write(self, writer: AbstractStreamWriter) -> None:
        buffer = bytearray()
        for line in self._lines:
            buffer += self._encode(line)
            if len(buffer) >= _CHUNK:
                await writer.write(bytes(buffer))
                buffer.clear()
        if buffer:
            await writer.write(bytes(buffer))

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        await self.write(writer)  # the declared size is exact: nothing to trim

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return b"".join(self._encode(line) for line in self._lines).decode(encoding, errors)


class OpenAIBatches:
    """The Batch API of one OpenAI-protocol provider, for one deployment."""

    def __init__(
        self,
        deployment: DeploymentSpec,
        endpoint: ProviderEndpoint,
        session: aiohttp.ClientSession,
        *,
        control_timeout: aiohttp.ClientTimeout = CONTROL_TIMEOUT,
        transfer_timeout: aiohttp.ClientTimeout = TRANSFER_TIMEOUT,
        page_size: int = 100,
    ):
        self._deployment = deployment
        self._endpoint = endpoint
        self._session = session
        self._control = control_timeout
        self._transfer = transfer_timeout
        self._page = str(page_size)

    async def find(self, farebox_batch_id: str, *, not_before: int | None = None) -> str | None:
        """The newest upstream batch whose metadata names `farebox_batch_id`; pages through
        the provider's list (newest first), stopping at batches created before `not_before`
        (unix seconds) when given."""
        params = {"limit": self._page}
        while True:
            page = await self._json("GET", "batches", params=params)
            data = page.get("data")
            batches = [b for b in data if isinstance(b, dict)] if isinstance(data, list) else []
            for batch in batches:
                metadata = batch.get("metadata")
                if isinstance(metadata, dict) and metadata.get(FAREBOX_BATCH_ID) == (
                    farebox_batch_id
                ):
                    return str(batch["id"])
                created = batch.get("created_at")
                if not_before is not None and isinstance(created, int) and created < not_before:
                    return None
            if not page.get("has_more") or not batches:
                return None
            params["after"] = str(batches[-1]["id"])

    async def submit(
        self,
        farebox_batch_id: str,
        endpoint: str,
        lines: Sequence[UpstreamLine],
        window: str,
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        if endpoint not in ENDPOINTS:
            raise ValueError(f"no provider batch for {endpoint!r}: one of {sorted(ENDPOINTS)}")
        if not lines:
            raise ValueError("a provider batch needs at least one line")
        file_id = await self._upload(farebox_batch_id, endpoint, lines)
        try:
            created = await self._json(
                "POST",
                "batches",
                body={
                    "input_file_id": file_id,
                    "endpoint": endpoint,
                    "completion_window": window,
                    "metadata": {**(metadata or {}), FAREBOX_BATCH_ID: farebox_batch_id},
                },
            )
        except UpstreamError as exc:
            # An error status means no batch was made: the uploaded file would only sit at
            # the provider. (After a timeout or a cut the batch may exist, so it stays.)
            if exc.kind == STATUS:
                try:
                    await self._delete_file(file_id)
                except UpstreamError as cleanup:  # best effort: the create error matters
                    log.warning("%s: left file %s: %s", self._deployment.id, file_id, cleanup)
            raise
        return _id(self._deployment, created)

    async def state(self, upstream_id: str) -> UpstreamState:
        return batch_state(await self._json("GET", f"batches/{upstream_id}"))

    async def results(self, upstream_id: str) -> AsyncIterator[UpstreamResult]:
        batch = await self._json("GET", f"batches/{upstream_id}")
        for key in ("output_file_id", "error_file_id"):
            file_id = batch.get(key)
            if isinstance(file_id, str) and file_id:
                async for record in self._records(file_id):
                    yield record

    async def cancel(self, upstream_id: str) -> None:
        try:
            await self._json("POST", f"batches/{upstream_id}/cancel")
        except UpstreamError as exc:
            # OpenAI answers 409 (some compatible servers 400) for a batch that has already
            # ended: nothing left to stop, which is what the caller wanted.
            if exc.status not in (400, 409) or (await self.state(upstream_id)).status not in (
                TERMINAL | {"cancelling"}
            ):
                raise

    async def discard(self, upstream_id: str) -> None:
        batch = await self._json("GET", f"batches/{upstream_id}")
        for key in ("input_file_id", "output_file_id", "error_file_id"):
            file_id = batch.get(key)
            if isinstance(file_id, str) and file_id:
                await self._delete_file(file_id)

    async def _delete_file(self, file_id: str) -> None:
        """Delete one provider file; one already gone is fine."""
        try:
            await self._json("DELETE", f"files/{file_id}")
        except UpstreamError as exc:
            if exc.status != 404:
                raise

    async def _upload(
        self, farebox_batch_id: str, endpoint: str, lines: Sequence[UpstreamLine]
    ) -> str:
        form = aiohttp.MultipartWriter("form-data")
        purpose = form.append("batch")
        purpose.set_content_disposition("form-data", name="purpose")
        payload = JsonlPayload(lines, endpoint, f"{farebox_batch_id}.jsonl")
        payload.set_content_disposition("form-data", name="file", filename=payload.filename)
        form.append_payload(payload)
        # The multipart writer sets Content-Type with its boundary; the endpoint's JSON one
        # must not override it.
        headers = {k: v for k, v in self._endpoint.headers.items() if k.lower() != "content-type"}
        uploaded = await self._json("POST", "files", data=form, headers=headers)
        return _id(self._deployment, uploaded)

    async def _json(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """One call whose answer is a JSON object; any other answer raises UpstreamError."""
        url = f"{self._endpoint.base}/{path}"
        send = orjson.dumps(body) if body is not None else data
        timeout = self._transfer if data is not None else self._control
        try:
            async with self._session.request(
                method,
                url,
                data=send,
                params=params,
                headers=upstream_headers(headers or self._endpoint.headers),
                timeout=timeout,
            ) as resp:
                raw = await resp.read()
                status, reply_headers = resp.status, resp.headers
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _transport_error(self._deployment, exc) from None
        request_id = reply_headers.get("x-request-id")
        if status != 200:
            raise _status_error(self._deployment, status, raw, reply_headers, request_id)
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            raise UpstreamError(
                MALFORMED,
                f"{self._deployment.id} answered {method} /{path} with a body that is not a "
                "JSON object",
                status=status,
                request_id=request_id,
            )
        return parsed

    async def _records(self, file_id: str) -> AsyncIterator[UpstreamResult]:
        """The results in one output or error file, parsed as the file streams in."""
        url = f"{self._endpoint.base}/files/{file_id}/content"
        headers = upstream_headers(self._endpoint.headers)
        try:
            async with self._session.get(url, headers=headers, timeout=self._transfer) as resp:
                if resp.status != 200:
                    raw = await resp.read()
                    raise _status_error(
                        self._deployment,
                        resp.status,
                        raw,
                        resp.headers,
                        resp.headers.get("x-request-id"),
                    )
                pending = bytearray()
                async for chunk in resp.content.iter_chunked(_CHUNK):
                    pending += chunk
                    cut = pending.rfind(b"\n")
                    if cut < 0:
                        continue  # a long line, still arriving
                    lines = bytes(pending[:cut]).split(b"\n")
                    del pending[: cut + 1]
                    for line in lines:
                        if (record := self._record(file_id, line)) is not None:
                            yield record
                if (record := self._record(file_id, bytes(pending))) is not None:
                    yield record
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _transport_error(self._deployment, exc) from None

    def _record(self, file_id: str, line: bytes) -> UpstreamResult | None:
        if not line.strip():
            return None
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            entry = None
        result = line_result(entry)
        if result is None:
            # One unreadable line must not hide the rest: the caller sees it as a line the
            # provider never answered.
            log.warning("%s: skipped an unreadable line in %s", self._deployment.id, file_id)
        return result


def batch_state(batch: Mapping[str, Any]) -> UpstreamState:
    """An OpenAI Batch object as an :class:`UpstreamState`."""
    counts = batch.get("request_counts")
    counts = counts if isinstance(counts, dict) else {}
    errors = batch.get("errors")
    items = errors.get("data") if isinstance(errors, dict) else None
    messages = []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict):
            line = item.get("line")
            text = str(item.get("message") or item.get("code") or "error")
            messages.append(f"line {line}: {text}" if line is not None else text)
    return UpstreamState(
        status=str(batch.get("status") or "validating"),
        total=int(counts.get("total") or 0),
        completed=int(counts.get("completed") or 0),
        failed=int(counts.get("failed") or 0),
        error="; ".join(messages[:5]) or None,
    )


def line_result(entry: Any) -> UpstreamResult | None:
    """One line of an OpenAI batch output or error file; None when it is not one."""
    if not isinstance(entry, dict) or not isinstance(entry.get("custom_id"), str):
        return None
    custom_id: str = entry["custom_id"]
    response = entry.get("response")
    if isinstance(response, dict):
        status = response.get("status_code")
        status = status if isinstance(status, int) else None
        body = response.get("body")
        body = body if isinstance(body, dict) else None
        usage = body.get("usage") if body is not None else None
        request_id = response.get("request_id")
        return UpstreamResult(
            custom_id=custom_id,
            http_status=status,
            body=body,
            usage=usage if isinstance(usage, dict) else None,
            provider_request_id=request_id if isinstance(request_id, str) else None,
            error=None if status == 200 else f"http_{status}",
        )
    # Never run (expired, cancelled) or refused before running: no response, an error.
    error = entry.get("error")
    error = error if isinstance(error, dict) else None
    code = error.get("code") if error is not None else None
    return UpstreamResult(
        custom_id=custom_id,
        http_status=None,
        body=error,
        usage=None,
        provider_request_id=None,
        error=code if isinstance(code, str) and code else "batch_error",
    )


def _id(deployment: DeploymentSpec, obj: Mapping[str, Any]) -> str:
    found = obj.get("id")
    if not isinstance(found, str) or not found:
        raise UpstreamError(MALFORMED, f"{deployment.id} answered an object without an id")
    return found


def _transport_error(deployment: DeploymentSpec, exc: BaseException) -> UpstreamError:
    if isinstance(exc, TimeoutError):  # aiohttp's timeouts are TimeoutErrors too
        return UpstreamError(TIMEOUT, f"{deployment.id} batch API timed out: {exc!s}")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return UpstreamError(CUT, f"{deployment.id} closed the connection mid-body")
    return UpstreamError(CONNECT, f"{deployment.id} unreachable: {type(exc).__name__}")
