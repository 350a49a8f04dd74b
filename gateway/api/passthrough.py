"""/v1/moderations, /v1/images/generations, /v1/audio/transcriptions, /v1/audio/speech and
/v1/rerank, as plain ASGI: the chat endpoints' auth, key limits, routes and error shapes,
then gateway/core/passthrough.py forwards them to OpenAI-protocol deployments.

JSON bodies are read whole (they are small) and checked for the fields each endpoint needs;
the transcription upload is streamed (gateway/api/passthrough_form.py); speech audio is
relayed as it arrives. Not planned here: drills, the response cache, quality gates and
fan-out strategies (they judge text answers).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orjson

from gateway.api.asgi import (
    DisconnectWatch,
    Headers,
    Receive,
    Scope,
    Send,
    new_request_id,
    read_body,
    send_bytes,
)
from gateway.api.common import (
    add_result_headers,
    admit,
    authenticate,
    guarded,
    method_not_allowed,
    plan_for,
    start_trace,
    workflow_tag,
)
from gateway.api.passthrough_form import UploadForm
from gateway.api.validate import parse_object
from gateway.core.metering import CallContext
from gateway.core.passthrough import ENDPOINTS, StreamBroken, Upload
from gateway.errors import bad_request
from gateway.state import GatewayState

log = logging.getLogger("farebox.api")

# path → endpoint; bare paths serve clients whose base URL lacks /v1.
PATHS = {f"{prefix}/{name}": name for prefix in ("/v1", "") for name in ENDPOINTS}
TRANSCRIPTIONS = "audio/transcriptions"
SPEECH = "audio/speech"
# OpenAI's defaults when the body names no model (the SDKs let you leave it out).
DEFAULT_MODELS = {"moderations": "omni-moderation-latest", "images/generations": "dall-e-2"}


def _missing(field: str) -> Exception:
    return bad_request(
        f"Missing required parameter: '{field}'.", param=field, code="missing_required_parameter"
    )


def _string(payload: dict[str, Any], field: str) -> None:
    value = payload.get(field)
    if value is None:
        raise _missing(field)
    if not isinstance(value, str) or not value:
        raise bad_request(
            f"Invalid '{field}': expected a non-empty string.", param=field, code="invalid_value"
        )


def check_body(endpoint: str, payload: dict[str, Any]) -> str:
    """The requested model (OpenAI's default where it has one); 400 naming the field a
    body lacks. Other fields pass through untouched: the provider judges them."""
    model = payload.get("model", DEFAULT_MODELS.get(endpoint))
    if model is None:
        raise _missing("model")
    if not isinstance(model, str) or not model:
        raise bad_request(
            "Invalid 'model': expected a non-empty string.", param="model", code="invalid_value"
        )
    if endpoint == "moderations":
        value = payload.get("input")
        if value is None:
            raise _missing("input")
        if not isinstance(value, str | list) or (isinstance(value, list) and not value):
            raise bad_request(
                "Invalid 'input': expected a string or a non-empty array.",
                param="input",
                code="invalid_value",
            )
    elif endpoint == "images/generations":
        _string(payload, "prompt")
    elif endpoint == SPEECH:
        _string(payload, "input")
        if payload.get("voice") is None:
            raise _missing("voice")
    elif endpoint == "rerank":
        _string(payload, "query")
        documents = payload.get("documents")
        if documents is None:
            raise _missing("documents")
        if not isinstance(documents, list) or not documents:
            raise bad_request(
                "Invalid 'documents': expected a non-empty array of strings or objects.",
                param="documents",
                code="invalid_value",
            )
        top_n = payload.get("top_n")
        if top_n is not None and (type(top_n) is not int or top_n < 1):
            raise bad_request(
                "Invalid 'top_n': expected a positive integer.", param="top_n", code="invalid_value"
            )
    return model


class PassthroughEndpoints:
    """Serves `PATHS` for the current GatewayState."""

    paths = PATHS  # every path it serves (`handles`)

    def __init__(self, state: Callable[[], GatewayState]) -> None:
        self._state = state

    def handles(self, path: str) -> bool:
        return path in PATHS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = new_request_id()
        headers: Headers = [(b"x-request-id", request_id.encode())]
        work = self._handle(scope, receive, send, request_id, headers)
        await guarded(send, headers, request_id, scope["path"], work)

    async def _handle(
        self, scope: Scope, receive: Receive, send: Send, request_id: str, headers: Headers
    ) -> None:
        path: str = scope["path"]
        if scope["method"] != "POST":
            raise method_not_allowed(scope["method"], path)
        state = self._state()
        principal = await authenticate(scope, state)
        endpoint = PATHS[path]
        server = state.config.server
        form: UploadForm | None = None
        if endpoint == TRANSCRIPTIONS:
            form = await UploadForm.open(scope, receive, server.body_timeout_s)
            payload: dict[str, Any] = dict(form.fields)
            model = payload.get("model") or ""
            if not model:
                form.close()
                raise _missing("model")
            upload = Upload(form.content_type, form.encode, lambda: form.error)
            body_bytes = sum(len(k) + len(v) for k, v in form.fields)
        else:
            body = await read_body(scope, receive, server.max_body_bytes, server.body_timeout_s)
            payload = parse_object(body, server)
            model = check_body(endpoint, payload)
            sent = payload

            def encode(upstream_model: str) -> bytes:
                return orjson.dumps({**sent, "model": upstream_model})

            upload = Upload("application/json", encode)
            body_bytes = len(body)
        key_id = principal.key_name if principal is not None else None
        ctx = CallContext(request_id, key_id, endpoint, model, endpoint == SPEECH, payload)
        ctx.principal = principal
        try:
            await self._serve(state, scope, receive, send, headers, ctx, upload, body_bytes)
        finally:
            if ctx.admission is not None:
                ctx.admission.settle(None)  # a no-op once the ledger row settled it
            if form is not None:
                form.close()

    async def _serve(
        self,
        state: GatewayState,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: Headers,
        ctx: CallContext,
        upload: Upload,
        body_bytes: int,
    ) -> None:
        ctx.workflow_id = workflow_tag(scope, ctx.payload)
        plan, ctx.shape = plan_for(state, ctx.requested_model, headers, ctx.payload, scope)
        ctx.route, ctx.workload, ctx.body_bytes = plan.route, plan.workload, body_bytes
        start_trace(ctx, scope)
        ctx.admission = await admit(state, ctx.principal, plan, ctx.payload, body_bytes, headers)
        service = state.passthrough
        assert service is not None  # build_state always builds it
        if ctx.endpoint == SPEECH:
            with DisconnectWatch(receive) as watch:
                streaming = await service.stream(ctx, plan, upload)
                headers.append((b"content-type", streaming.content_type.encode()))
                add_result_headers(
                    headers, streaming.deployment, streaming.attempts, streaming.fallback_reason
                )
                chunks = streaming.chunks
                try:
                    await send({"type": "http.response.start", "status": 200, "headers": headers})
                    async for chunk in chunks:
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    watch.stop()  # uvicorn reports a disconnect once the response is done
                    await send({"type": "http.response.body", "body": b""})
                except StreamBroken as exc:
                    # Headers are out: the body ends short, which the client sees as an error.
                    log.info("speech stream broke (%s): %s", ctx.request_id, exc)
                except OSError as exc:
                    log.info("client left mid-stream (%s): %s", ctx.request_id, exc)
                finally:
                    await streaming.close()
            return
        if upload.content_type == "application/json":
            with DisconnectWatch(receive) as watch:
                answer = await service.complete(ctx, plan, upload)
                watch.stop()
        else:  # the upload is still being read from `receive`: no watch on it
            answer = await service.complete(ctx, plan, upload)
        headers.append((b"content-type", answer.content_type.encode()))
        add_result_headers(
            headers, answer.deployment, answer.attempts, answer.fallback_reason, answer.cost_usd
        )
        await send_bytes(send, 200, answer.body, headers)
