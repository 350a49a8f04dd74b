"""Application factory and blocking runner for the provider simulator."""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web

from .anthropic_wire import messages
from .batch_wire import BATCHES, batch_routes
from .bedrock_wire import converse, converse_stream
from .extra_wire import images, moderations, rerank, speech, transcriptions, uploads
from .files_wire import FILES, files_routes
from .gemini_wire import gemini_generate, oauth_token, vertex_generate
from .invoices import invoice
from .openai_extra import completions, embeddings, list_models, retrieve_model
from .openai_wire import azure_chat_completions, azure_v1_chat_completions, chat_completions
from .responses_wire import azure_responses, responses
from .runtime import STATE, SimState, new_id

__all__ = ["create_app", "run"]


async def _stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    snapshot = state.stats.snapshot()
    gpus = state.gpus.snapshot()
    if gpus:  # `slots=` models only (simulator/gpu.py), so other snapshots keep their shape
        snapshot["gpus"] = gpus
    return web.Response(body=orjson.dumps(snapshot), content_type="application/json")


async def _received_ids(request: web.Request) -> web.Response:
    """`x-client-request-id`s received, oldest first (`GET /_received_ids`)."""
    ids = list(request.app[STATE].stats.client_ids)
    return web.Response(body=orjson.dumps(ids), content_type="application/json")


async def _reset(request: web.Request) -> web.Response:
    request.app[STATE].reset()
    request.app[FILES].clear()
    request.app[BATCHES].clear()
    return web.Response(body=b'{"ok":true}', content_type="application/json")


async def _stamp_request_id(request: web.Request, response: web.StreamResponse) -> None:
    # Routes set their own id; this catches the rest (404s, 405s, /_stats) so that
    # every response carries one, as real providers' do.
    if "x-request-id" not in response.headers:
        response.headers["x-request-id"] = new_id("req_")


def create_app(require_key: str | None = None, seed: int = 0) -> web.Application:
    """Build the simulator app.

    ``require_key`` turns on auth (``Authorization: Bearer`` for OpenAI routes,
    ``x-api-key`` for ``/v1/messages``, ``api-key`` for Azure, ``x-goog-api-key`` for
    Gemini, an issued OAuth token for Vertex AI, the SigV4 access key id for Bedrock; see
    :mod:`.runtime`); ``seed`` fixes the RNG behind ``jitter`` and ``fail_rate`` so runs
    are reproducible.

    Routes: OpenAI ``/v1/...`` (chat, ``/v1/responses``, completions, embeddings,
    models); Anthropic ``/v1/messages``; Azure
    ``/openai/deployments/{deployment}/chat/completions``, ``/openai/v1/chat/completions``
    and ``/openai/v1/responses`` (also ``/openai/responses?api-version=…``);
    Gemini
    ``/{v1beta|v1|v1alpha}/models/{model}:generateContent|streamGenerateContent``; Vertex AI
    ``/{v1|v1beta1}/projects/{p}/locations/{l}/publishers/google/models/{model}:...`` and its
    OAuth ``/token``; Bedrock ``/model/{modelId}/converse`` and ``/converse-stream``;
    OpenAI Files and Batch (``/v1/files``, ``/v1/batches``; :mod:`.batch_wire`); moderations,
    images, audio transcriptions and speech, and rerank (:mod:`.extra_wire`).
    """
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[STATE] = SimState(require_key, seed)
    app.on_response_prepare.append(_stamp_request_id)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/responses", responses)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/v1/moderations", moderations)
    app.router.add_post("/v1/images/generations", images)
    app.router.add_post("/v1/audio/transcriptions", transcriptions)
    app.router.add_post("/v1/audio/speech", speech)
    app.router.add_post("/v1/rerank", rerank)
    app.router.add_get("/_uploads", uploads)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model}", retrieve_model)
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/openai/deployments/{deployment}/chat/completions", azure_chat_completions)
    app.router.add_post("/openai/v1/chat/completions", azure_v1_chat_completions)
    app.router.add_post("/openai/v1/responses", azure_responses)
    app.router.add_post("/openai/responses", azure_responses)
    app.router.add_post("/{version:v1beta|v1|v1alpha}/models/{target}", gemini_generate)
    app.router.add_post(
        "/{version:v1|v1beta1}/projects/{project}/locations/{location}"
        "/publishers/google/models/{target}",
        vertex_generate,
    )
    app.router.add_post("/token", oauth_token)
    app.router.add_post("/model/{model_id}/converse", converse)
    app.router.add_post("/model/{model_id}/converse-stream", converse_stream)
    app.router.add_get("/_stats", _stats)
    app.router.add_get("/_received_ids", _received_ids)
    app.router.add_post("/_reset", _reset)
    app.router.add_get("/_invoice", invoice)
    files_routes(app)
    batch_routes(app)  # also POST /_clock (batch clock + billing day)
    return app


def run(host: str = "127.0.0.1", port: int = 9100, require_key: str | None = None) -> None:
    """Serve the simulator until interrupted (uses uvloop when it is installed)."""
    loop: asyncio.AbstractEventLoop
    try:
        import uvloop
    except ImportError:
        loop = asyncio.new_event_loop()
    else:
        loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    web.run_app(
        create_app(require_key=require_key),
        host=host,
        port=port,
        access_log=None,
        # Without this a client giving up on a slow or hung request would leave its
        # handler running; with it the handler is cancelled on disconnect.
        handler_cancellation=True,
        shutdown_timeout=1.0,
        print=lambda *_: print(f"mock upstream listening on http://{host}:{port}", flush=True),
        loop=loop,
    )
