"""OpenAI's other endpoints: moderations, image generation, transcription, speech, and a
Cohere/Jina-shaped rerank, in their real wire formats and with the same fault directives as
chat (model suffix ``::status=500,fail_first=1`` or the ``x-mock-behavior`` header).

* ``POST /v1/moderations``: one result per input, every category present; flagged when an
  input holds the word ``kill``. No usage (OpenAI reports none; moderations are free).
* ``POST /v1/images/generations``: ``n`` images (default 1) as ``url`` or ``b64_json``
  (a 1x1 PNG). ``gpt-image`` models also report token usage, as OpenAI's do.
* ``POST /v1/audio/transcriptions``: multipart, read as it streams. The audio's duration is
  its size at 32,000 bytes a second (16 kHz, 16-bit mono PCM). ``response_format`` json
  (``usage: {type: duration, seconds}``), verbose_json (``duration``, segments), text, srt
  or vtt. Each upload is kept in :data:`UPLOADS` (bytes, body reads, chunked or not), served
  at ``GET /_uploads``, so a test can see that a gateway streamed it.
* ``POST /v1/audio/speech``: audio bytes streamed in 8 KiB chunks, 64 bytes per input
  character; ``cut_after=N`` aborts after N chunks; ``tps=N`` sends N chunks a second.
* ``POST /v1/rerank``: ``results`` sorted by relevance (query word overlap), ``top_n``,
  ``return_documents``; ``meta.billed_units.search_units`` = one per 100 documents.

Endpoints count in ``/_stats`` as ``moderations``, ``images``, ``audio_transcriptions``,
``audio_speech`` and ``rerank``, and 200s per model as usual; billed units (images, audio
seconds, characters, search units) per model and day in :data:`UNITS`.
"""

from __future__ import annotations

import asyncio
import base64
import math
import re
from collections import defaultdict
from datetime import date
from typing import Any
from weakref import WeakKeyDictionary

from aiohttp import BodyPartReader, web

from .behaviour import DirectiveError, resolve, split_model
from .runtime import STATE, Call, SimState, begin, gate, handler, new_id, now

__all__ = ["UNITS", "UPLOADS", "images", "moderations", "rerank", "speech", "transcriptions"]

BYTES_PER_SECOND = 32_000
SPEECH_BYTES_PER_CHAR = 64
SPEECH_CHUNK = 8 * 1024
_PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6300010000000500010d0a2db40000000049454e44ae426082"
    )
).decode()
_CATEGORIES = (
    "hate",
    "hate/threatening",
    "harassment",
    "harassment/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
_AUDIO_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
#: Per simulator: every multipart upload received, newest last: {"model", "bytes", "reads",
#: "chunked"}.
UPLOADS: WeakKeyDictionary[SimState, list[dict[str, Any]]] = WeakKeyDictionary()
#: Per simulator: billed units per (base model, unit, UTC day) of 200 answers.
UNITS: WeakKeyDictionary[SimState, defaultdict[tuple[str, str, date], float]] = WeakKeyDictionary()


def _bill(call: Call, unit: str, amount: float) -> None:
    units = UNITS.setdefault(call.state, defaultdict(float))
    units[(call.base, unit, call.state.stats.today())] += amount


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


@handler
async def moderations(request: web.Request) -> web.StreamResponse:
    call = await begin(request, "moderations", "openai")
    value = call.body.get("input")
    inputs = [value] if isinstance(value, str) else value
    if not isinstance(inputs, list) or not inputs:
        raise call.error(400, "'input' must be a string or a non-empty array.", param="input")
    texts = [v if isinstance(v, str) else str(v.get("text", "")) for v in inputs]
    await gate(call, sum(len(t) // 4 + 1 for t in texts))
    results = []
    for text in texts:
        flagged = "kill" in _words(text)
        results.append(
            {
                "flagged": flagged,
                "categories": {c: flagged and c == "violence" for c in _CATEGORIES},
                "category_scores": {
                    c: (0.91 if flagged and c == "violence" else 0.0001) for c in _CATEGORIES
                },
                "category_applied_input_types": {c: ["text"] for c in _CATEGORIES},
            }
        )
    return call.json({"id": new_id("modr-"), "model": call.model, "results": results})


@handler
async def images(request: web.Request) -> web.StreamResponse:
    call = await begin(request, "images", "openai")
    prompt = call.body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise call.error(400, "'prompt' must be a non-empty string.", param="prompt")
    n = call.body.get("n", 1)
    if type(n) is not int or not 1 <= n <= 10:
        raise call.error(400, "'n' must be an integer from 1 to 10.", param="n")
    tokens = len(prompt) // 4 + 1
    await gate(call, tokens)
    b64 = call.body.get("response_format") == "b64_json" or call.model.startswith("gpt-image")
    data = [
        {"b64_json": _PNG} if b64 else {"url": f"https://sim.invalid/img/{new_id('')}.png"}
        for _ in range(n)
    ]
    payload: dict[str, Any] = {"created": now(), "data": data}
    if call.model.startswith("gpt-image"):
        payload["usage"] = {
            "total_tokens": tokens + 272 * n,
            "input_tokens": tokens,
            "output_tokens": 272 * n,
            "input_tokens_details": {"text_tokens": tokens, "image_tokens": 0},
        }
        call.state.stats.usage(call.base, prompt=tokens, completion=272 * n)
    _bill(call, "image", n)
    return call.json(payload)


async def _form_call(request: web.Request) -> tuple[Call, dict[str, str], int, int]:
    """Auth, then the multipart form read as it arrives: (call, text fields, file bytes,
    body reads). Directives come from the form's model, as from a JSON body's."""
    state = request.app[STATE]
    state.stats.endpoint("audio_transcriptions", request.headers.get("x-client-request-id"))
    call = Call(request, state, "audio/transcriptions", "openai")
    if state.bearer is not None and request.headers.get("Authorization") != state.bearer:
        raise call.error(401, None, code="invalid_api_key")
    fields: dict[str, str] = {}
    size = reads = 0
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader) or part.name is None:
                continue
            if part.filename is None:
                fields[part.name] = (await part.read()).decode()
                continue
            while chunk := await part.read_chunk(64 * 1024):
                size += len(chunk)
                reads += 1
    except (AssertionError, ValueError) as exc:
        raise call.error(400, f"Could not parse the multipart form: {exc}.") from None
    model = fields.get("model", "")
    if model:
        call.model = model
        call.base, suffix = split_model(model)
        try:
            call.behaviour = resolve(suffix, request.headers.get("x-mock-behavior", ""))
        except DirectiveError as exc:
            raise call.error(400, str(exc), code="invalid_mock_directive", param="model") from None
    UPLOADS.setdefault(state, []).append(
        {
            "model": call.base,
            "bytes": size,
            "reads": reads,
            "chunked": request.headers.get("Transfer-Encoding", "").lower() == "chunked",
        }
    )
    if not model:
        raise call.error(400, "you must provide a model", param="model")
    if reads == 0:
        raise call.error(400, "Missing required parameter: 'file'.", param="file")
    return call, fields, size, reads


def _timestamp(seconds: float, sep: str) -> str:
    whole = int(seconds)
    return f"{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}{sep}000"


@handler
async def transcriptions(request: web.Request) -> web.StreamResponse:
    call, fields, size, _ = await _form_call(request)
    seconds = round(size / BYTES_PER_SECOND, 2)
    await gate(call, 1)
    text = f"Simulated transcript of {seconds:g} seconds of audio."
    fmt = fields.get("response_format", "json")
    _bill(call, "audio_second", seconds)
    if fmt == "json":
        return call.json(
            {"text": text, "usage": {"type": "duration", "seconds": math.ceil(seconds)}}
        )
    if fmt == "verbose_json":
        segment = {
            "id": 0,
            "seek": 0,
            "start": 0.0,
            "end": seconds,
            "text": text,
            "tokens": [1, 2, 3],
            "temperature": 0.0,
            "avg_logprob": -0.2,
            "compression_ratio": 1.1,
            "no_speech_prob": 0.01,
        }
        payload = {
            "task": "transcribe",
            "language": fields.get("language", "english"),
            "duration": seconds,
            "text": text,
            "segments": [segment],
        }
        return call.json(payload)
    if fmt in ("srt", "vtt"):
        sep = "," if fmt == "srt" else "."
        span = f"{_timestamp(0, sep)} --> {_timestamp(seconds, sep)}"
        text = f"1\n{span}\n{text}\n" if fmt == "srt" else f"WEBVTT\n\n{span}\n{text}\n"
    elif fmt != "text":
        raise call.error(400, f"Invalid response_format {fmt!r}.", param="response_format")
    call.state.stats.served(call.base, 200, False)
    return web.Response(text=text + "\n", content_type="text/plain", headers=call.headers)


@handler
async def speech(request: web.Request) -> web.StreamResponse:
    call = await begin(request, "audio_speech", "openai")
    text = call.body.get("input")
    if not isinstance(text, str) or not text:
        raise call.error(400, "'input' must be a non-empty string.", param="input")
    if call.body.get("voice") is None:
        raise call.error(400, "Missing required parameter: 'voice'.", param="voice")
    fmt = call.body.get("response_format", "mp3")
    if fmt not in _AUDIO_TYPES:
        raise call.error(400, f"Invalid response_format {fmt!r}.", param="response_format")
    await gate(call, len(text) // 4 + 1)
    audio = (text.encode() * SPEECH_BYTES_PER_CHAR)[: len(text) * SPEECH_BYTES_PER_CHAR]
    response = web.StreamResponse(headers={**call.headers, "Content-Type": _AUDIO_TYPES[fmt]})
    response.enable_chunked_encoding()
    await response.prepare(request)
    cut = call.behaviour.cut_after
    for sent, start in enumerate(range(0, len(audio), SPEECH_CHUNK)):
        if cut is not None and sent >= cut:
            call.state.stats.served(call.base, 200, False)
            call.state.stats.fault("cut")
            assert request.transport is not None
            request.transport.abort()
            return response
        if sent and call.behaviour.tps:  # paced: one chunk per 1/tps seconds
            await asyncio.sleep(1 / call.behaviour.tps)
        await response.write(audio[start : start + SPEECH_CHUNK])
    await response.write_eof()
    call.state.stats.served(call.base, 200, False)
    _bill(call, "character", len(text))
    return response


@handler
async def rerank(request: web.Request) -> web.StreamResponse:
    call = await begin(request, "rerank", "openai")
    query = call.body.get("query")
    documents = call.body.get("documents")
    if not isinstance(query, str) or not query:
        raise call.error(400, "'query' must be a non-empty string.", param="query")
    if not isinstance(documents, list) or not documents:
        raise call.error(400, "'documents' must be a non-empty array.", param="documents")
    texts = [d if isinstance(d, str) else str((d or {}).get("text", "")) for d in documents]
    await gate(call, sum(len(t) // 4 + 1 for t in texts) + len(query) // 4 + 1)
    words = _words(query)
    scores = [len(words & _words(t)) / (len(words) or 1) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: (-scores[i], i))
    top_n = call.body.get("top_n")
    if type(top_n) is int and top_n > 0:
        order = order[:top_n]
    results: list[dict[str, Any]] = []
    for i in order:
        result: dict[str, Any] = {"index": i, "relevance_score": round(0.05 + 0.9 * scores[i], 4)}
        if call.body.get("return_documents"):
            result["document"] = {"text": texts[i]}
        results.append(result)
    units = math.ceil(len(texts) / 100)
    _bill(call, "search_unit", units)
    return call.json(
        {
            "id": new_id("rerank-"),
            "results": results,
            "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": units}},
        }
    )


async def uploads(request: web.Request) -> web.Response:
    """``GET /_uploads``: what :data:`UPLOADS` holds."""
    return web.json_response(UPLOADS.get(request.app[STATE], []))
