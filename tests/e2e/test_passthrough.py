"""Moderations, images, transcriptions, speech and rerank through the gateway: the real OpenAI
Python SDK, unchanged (httpx for rerank, which the SDK has not), against the simulator over
HTTP, with a SQLite ledger read after the gateway has shut down.

Each endpoint fails over from a deployment whose first call answers 5xx to a second one; the
ledger has one attempt row per upstream call with the unit, the units and the cost the price
book gives (exact Decimals); a transcription upload of several MB is streamed (the simulator
saw it chunked, over many reads; the process's traced memory never held it twice); errors
are OpenAI-shaped with an x-request-id. Bodies are validated against OpenAI's spec.
"""

from __future__ import annotations

import io
import tracemalloc
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.conftest import sqlite_settings
from tests.gateway_harness import config_from_yaml, running_gateway
from tests.ledger_reads import sql_rows
from tests.openapi import ERROR, check
from tests.simulator import start_simulator

pytestmark = pytest.mark.e2e

KEY = "sk-passthrough-01"
LIMITED = "sk-passthrough-02"  # may call `moderation` only, twice a minute
AUDIO_BYTES = 6 * 1024 * 1024  # 196.608 s at the simulator's 32,000 bytes a second
SPEECH_TEXT = "Hello from Farebox, " * 20  # 400 characters: four 8 KiB chunks of audio

CONFIG = """
auth:
  keys:
    - {name: alice, key: %(key)s}
    - {name: bob, key: %(limited)s, routes: [moderation], rpm: 2}
providers:
  sim: {kind: closed_api, protocol: openai, api_base: "%(sim)s/v1", api_key: k}
deployments:
  mod@sim: {provider: sim, model: omni-moderation-latest, price: {input: 0, output: 0}}
  img-flaky@sim:
    {provider: sim, model: "dall-e-3::fail_first=1,status=500", price: {per_image: 0.04}}
  img@sim:
    provider: sim
    model: dall-e-3
    price: {per_image: {default: 0.04, "hd/1024x1792": 0.12}}
  gpt-image@sim: {provider: sim, model: gpt-image-1, price: {input: 5, output: 40, per_image: 0.04}}
  img-unpriced@sim: {provider: sim, model: sim-painter}
  whisper-flaky@sim:
    {provider: sim, model: "whisper-1::fail_first=1,status=503", price: {per_audio_second: 0.0001}}
  whisper@sim: {provider: sim, model: whisper-1, price: {per_audio_second: 0.0001}}
  tts-flaky@sim:
    {provider: sim, model: "tts-1::fail_first=1,status=502", price: {per_1k_characters: 0.015}}
  tts@sim: {provider: sim, model: tts-1, price: {per_1k_characters: 0.015}}
  tts-cut@sim: {provider: sim, model: "tts-1::cut_after=1", price: {per_1k_characters: 0.015}}
  tts-slow@sim: {provider: sim, model: "tts-1::tps=4", price: {per_1k_characters: 0.015}}
  rerank-flaky@sim:
    {provider: sim, model: "rerank-v3::fail_first=1,status=500", price: {per_search_unit: 0.002}}
  rerank@sim: {provider: sim, model: rerank-v3, price: {per_search_unit: 0.002}}
routes:
  moderation: {targets: [mod@sim]}
  image: {strategy: failover, targets: [img-flaky@sim, img@sim], retry: {attempts: 1}}
  image-tokens: {targets: [gpt-image@sim]}
  image-unpriced: {targets: [img-unpriced@sim]}
  transcribe: {strategy: failover, targets: [whisper-flaky@sim, whisper@sim], retry: {attempts: 1}}
  transcribe-plain: {targets: [whisper@sim]}
  speak: {strategy: failover, targets: [tts-flaky@sim, tts@sim], retry: {attempts: 1}}
  speak-cut: {targets: [tts-cut@sim]}
  speak-slow: {targets: [tts-slow@sim]}
  rerank: {strategy: failover, targets: [rerank-flaky@sim, rerank@sim], retry: {attempts: 1}}
"""


def _attempts(url: str, request_id: str) -> list[Any]:
    return sql_rows(
        url,
        "SELECT role, deployment, http_status, error_class, units, unit, cost_usd "
        "FROM attempts WHERE request_id = :id ORDER BY attempt_no",
        {"id": request_id},
    )


def _request(url: str, request_id: str) -> Any:
    rows = sql_rows(
        url,
        "SELECT endpoint, route, final_status, error_class, attempts, cost_usd "
        "FROM requests WHERE id = :id",
        {"id": request_id},
    )
    assert len(rows) == 1, request_id
    return rows[0]


def _dec(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Every call once, through one gateway; the ledger is read after it shut down."""
    sim, stop = start_simulator()
    directory: Path = tmp_path_factory.mktemp("passthrough")
    settings = sqlite_settings(directory)
    seen: dict[str, Any] = {}
    try:
        config = config_from_yaml(CONFIG % {"sim": sim, "key": KEY, "limited": LIMITED}, {})
        with running_gateway(config, settings) as gw:
            client = openai.OpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0)
            _calls(client, gw.base_url, seen)
            seen["uploads"] = httpx.get(f"{sim}/_uploads").json()
            seen["stats"] = httpx.get(f"{sim}/_stats").json()
    finally:
        stop()
    seen["db"] = settings.database_url
    yield seen


def _calls(client: openai.OpenAI, base: str, seen: dict[str, Any]) -> None:
    raw = client.moderations.with_raw_response.create(
        model="moderation", input=["a friendly note", "I will kill the process"]
    )
    seen["moderation"] = (raw.headers, raw.parse())

    raw_img = client.images.with_raw_response.generate(
        model="image", prompt="a lighthouse", n=2, size="1024x1792", quality="hd"
    )
    seen["image"] = (raw_img.headers, raw_img.parse())
    tokens = client.images.with_raw_response.generate(model="image-tokens", prompt="a bird")
    seen["image_tokens"] = (tokens.headers, tokens.parse())
    unpriced = client.images.with_raw_response.generate(model="image-unpriced", prompt="a cat")
    seen["image_unpriced"] = unpriced.headers

    audio = io.BytesIO(b"\x01\x02" * (AUDIO_BYTES // 2))
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        raw_tr = client.audio.transcriptions.with_raw_response.create(
            model="transcribe", file=("talk.wav", audio, "audio/wav")
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    seen["transcription"] = (raw_tr.headers, raw_tr.parse())
    seen["transcription_peak"] = peak - before
    small = b"\x00" * 64_000  # two seconds
    verbose = client.audio.transcriptions.with_raw_response.create(
        model="transcribe-plain", file=("a.wav", small), response_format="verbose_json"
    )
    seen["verbose"] = (verbose.headers, verbose.http_response.json())
    text = client.audio.transcriptions.with_raw_response.create(
        model="transcribe-plain", file=("a.wav", small), response_format="text"
    )
    seen["text"] = (text.headers, text.http_response.text)

    with client.audio.speech.with_streaming_response.create(
        model="speak", voice="alloy", input=SPEECH_TEXT
    ) as speech:
        seen["speech"] = (speech.headers, b"".join(speech.iter_bytes()))
    whole = client.audio.speech.with_raw_response.create(
        model="speak", voice="alloy", input="Hi there", response_format="wav"
    )
    seen["speech_whole"] = (whole.headers, whole.parse().content)
    try:
        with client.audio.speech.with_streaming_response.create(
            model="speak-cut", voice="alloy", input=SPEECH_TEXT
        ) as cut:
            seen["speech_cut_id"] = cut.headers["x-request-id"]
            b"".join(cut.iter_bytes())
        seen["speech_cut_error"] = None
    except (httpx.HTTPError, openai.APIError) as exc:
        seen["speech_cut_error"] = exc

    # The client takes the first chunk and leaves (a chunk every 250 ms upstream).
    with client.audio.speech.with_streaming_response.create(
        model="speak-slow", voice="alloy", input=SPEECH_TEXT
    ) as slow:
        seen["speech_left_id"] = slow.headers["x-request-id"]
        next(slow.iter_bytes())

    documents = ["the cat sat", "dogs bark loudly", "a cat and a dog"]
    body = {
        "model": "rerank",
        "query": "cat",
        "documents": documents,
        "top_n": 2,
        "return_documents": True,
    }
    auth = {"Authorization": f"Bearer {KEY}"}
    rerank = httpx.post(f"{base}/rerank", json=body, headers=auth)
    seen["rerank"] = rerank

    # The file before the model (curl -F file=@... -F model=...): spooled whole, then routed;
    # the upstream gets the deployment's model name.
    boundary = "xyz"
    form = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="late.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n".encode()
        + b"\x00" * 96_000
        + f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n'
        f"transcribe-plain\r\n--{boundary}--\r\n".encode()
    )
    form_type = {**auth, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    seen["model_last"] = httpx.post(f"{base}/audio/transcriptions", content=form, headers=form_type)

    def cut_upload() -> Iterator[bytes]:
        # The client's body ends in the middle of the file, after the upstream call began.
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n'
            f"transcribe-plain\r\n--{boundary}\r\n"
            'Content-Disposition: form-data; name="file"; filename="cut.wav"\r\n\r\n'
        ).encode()
        yield b"\x00" * 200_000

    seen["cut_upload"] = httpx.post(
        f"{base}/audio/transcriptions", content=cut_upload(), headers=form_type
    )
    limited = {"Authorization": f"Bearer {LIMITED}"}
    image_body = {"model": "image", "prompt": "x"}
    moderation_body = {"model": "moderation", "input": "x"}
    seen["limited"] = [
        httpx.post(f"{base}/images/generations", json=image_body, headers=limited),
        *(httpx.post(f"{base}/moderations", json=moderation_body, headers=limited) for _ in "abc"),
    ]

    seen["errors"] = {
        "bad_json": httpx.post(
            f"{base}/moderations",
            content=b"{not json",
            headers={**auth, "Content-Type": "application/json"},
        ),
        "unknown_model": httpx.post(
            f"{base}/images/generations", json={"model": "nope", "prompt": "x"}, headers=auth
        ),
        "no_file": httpx.post(
            f"{base}/audio/transcriptions",
            data={"model": "transcribe"},
            files={"x": ("", b"")},
            headers=auth,
        ),
        "no_key": httpx.post(f"{base}/rerank", json=body),
        "get": httpx.get(f"{base}/audio/speech", headers=auth),
        "no_voice": httpx.post(
            f"{base}/audio/speech", json={"model": "speak", "input": "hi"}, headers=auth
        ),
    }


def test_moderation(run: dict[str, Any]) -> None:
    headers, result = run["moderation"]
    body = result.model_dump(exclude_unset=True)
    check("CreateModerationResponse", body)
    assert [r.flagged for r in result.results] == [False, True]
    request_id = headers["x-request-id"]
    assert headers["x-farebox-deployment"] == "mod@sim"
    row = _request(run["db"], request_id)
    assert (row.endpoint, row.route, row.final_status, row.attempts) == (
        "moderations",
        "moderation",
        200,
        1,
    )
    [attempt] = _attempts(run["db"], request_id)
    # Free on OpenAI, priced so: 0, not unknown; no unit.
    assert (attempt.unit, _dec(attempt.units), _dec(attempt.cost_usd)) == (None, None, Decimal(0))


def test_images_fail_over_and_bill_per_image(run: dict[str, Any]) -> None:
    headers, result = run["image"]
    check("ImagesResponse", result.model_dump(exclude_unset=True))
    assert len(result.data) == 2
    request_id = headers["x-request-id"]
    assert headers["x-farebox-deployment"] == "img@sim"
    assert headers["x-farebox-attempts"] == "2"
    first, second = _attempts(run["db"], request_id)
    assert (first.role, first.deployment, first.http_status) == ("primary", "img-flaky@sim", 500)
    assert first.error_class is not None and _dec(first.cost_usd) == 0
    assert second.role == "fallback" and second.error_class is None
    # 2 images at the hd/1024x1792 rate, exactly.
    assert (second.unit, _dec(second.units)) == ("image", Decimal(2))
    assert _dec(second.cost_usd) == Decimal("0.24")
    assert _dec(_request(run["db"], request_id).cost_usd) == Decimal("0.24")
    assert Decimal(headers["x-farebox-cost-usd"]) == Decimal("0.24")


def test_images_reported_tokens_win_and_unknown_price_is_none(run: dict[str, Any]) -> None:
    headers, result = run["image_tokens"]
    check("ImagesResponse", result.model_dump(exclude_unset=True))
    [attempt] = _attempts(run["db"], headers["x-request-id"])
    usage = result.usage
    assert usage is not None
    expected = (Decimal(usage.input_tokens) * 5 + Decimal(usage.output_tokens) * 40) / 10**6
    assert (attempt.unit, _dec(attempt.units)) == ("image", Decimal(1))
    assert _dec(attempt.cost_usd) == expected
    [unpriced] = _attempts(run["db"], run["image_unpriced"]["x-request-id"])
    assert unpriced.cost_usd is None and _dec(unpriced.units) == 1


def test_transcription_streams_the_upload_and_fails_over(run: dict[str, Any]) -> None:
    headers, result = run["transcription"]
    check("CreateTranscriptionResponseJson", result.model_dump(exclude_unset=True))
    request_id = headers["x-request-id"]
    assert headers["x-farebox-deployment"] == "whisper@sim"
    first, second = _attempts(run["db"], request_id)
    assert (first.deployment, first.http_status, second.deployment) == (
        "whisper-flaky@sim",
        503,
        "whisper@sim",
    )
    # usage.seconds (whole seconds, as OpenAI reports them) × the per-second rate.
    seconds = Decimal(-(-AUDIO_BYTES // 32_000))
    assert (second.unit, _dec(second.units)) == ("audio_second", seconds)
    assert _dec(second.cost_usd) == seconds * Decimal("0.0001")
    # Both upstream calls got the whole file, chunked, over many reads: streamed, and the
    # fallback replayed it.
    big = [u for u in run["uploads"] if u["bytes"] == AUDIO_BYTES]
    assert len(big) == 2, run["uploads"]
    assert all(u["chunked"] and u["reads"] > 10 for u in big)
    # Client, gateway and simulator share this process: a body held whole anywhere on the
    # way would have shown up as a peak of at least its size.
    assert run["transcription_peak"] < AUDIO_BYTES / 2


def test_transcription_formats(run: dict[str, Any]) -> None:
    headers, body = run["verbose"]
    check("CreateTranscriptionResponseVerboseJson", body)
    [attempt] = _attempts(run["db"], headers["x-request-id"])
    assert (attempt.unit, _dec(attempt.units)) == ("audio_second", Decimal("2"))
    assert _dec(attempt.cost_usd) == Decimal("0.0002")
    text_headers, text = run["text"]
    assert text.startswith("Simulated transcript") and "text/plain" in text_headers["content-type"]
    [plain] = _attempts(run["db"], text_headers["x-request-id"])
    # A text answer states no duration: unknown units, unknown cost (never $0).
    assert (plain.unit, plain.units, plain.cost_usd) == ("audio_second", None, None)


def test_speech_streams_audio_back(run: dict[str, Any]) -> None:
    headers, audio = run["speech"]
    assert headers["content-type"] == "audio/mpeg"
    assert len(audio) == len(SPEECH_TEXT) * 64
    request_id = headers["x-request-id"]
    first, second = _attempts(run["db"], request_id)
    assert (first.deployment, first.http_status) == ("tts-flaky@sim", 502)
    assert (second.deployment, second.unit, _dec(second.units)) == (
        "tts@sim",
        "character",
        Decimal(len(SPEECH_TEXT)),
    )
    assert _dec(second.cost_usd) == Decimal(len(SPEECH_TEXT)) * Decimal("0.000015")
    row = _request(run["db"], request_id)
    assert (row.endpoint, row.final_status, row.error_class) == ("audio/speech", 200, None)


def test_speech_cut_mid_body_is_an_error_and_a_failed_attempt(run: dict[str, Any]) -> None:
    assert run["speech_cut_error"] is not None  # the body ended short: never a clean 200
    request_id = run["speech_cut_id"]
    [attempt] = _attempts(run["db"], request_id)
    # The provider made the audio from the whole input: billed by its characters.
    assert (attempt.error_class, attempt.http_status) == ("cut", 200)
    assert (attempt.unit, _dec(attempt.units)) == ("character", Decimal(len(SPEECH_TEXT)))
    assert _dec(attempt.cost_usd) == Decimal(len(SPEECH_TEXT)) * Decimal("0.000015")
    row = _request(run["db"], request_id)
    assert (row.final_status, row.error_class) == (200, "cut")


def test_rerank(run: dict[str, Any]) -> None:
    response: httpx.Response = run["rerank"]
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["index"] for r in body["results"]] == [0, 2]
    assert body["results"][0]["document"] == {"text": "the cat sat"}
    scores = [r["relevance_score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)
    request_id = response.headers["x-request-id"]
    first, second = _attempts(run["db"], request_id)
    assert (first.http_status, second.deployment) == (500, "rerank@sim")
    assert (second.unit, _dec(second.units), _dec(second.cost_usd)) == (
        "search_unit",
        Decimal(1),
        Decimal("0.002"),
    )


def test_simulator_counted_every_call(run: dict[str, Any]) -> None:
    endpoints = run["stats"]["endpoints"]
    assert endpoints["moderations"] == 3  # alice's, bob's two admitted (not his 429)
    assert endpoints["images"] == 4  # the failed try, the fallback, gpt-image, unpriced
    # failed, fallback, verbose, text, model last, the cut upload's begun call
    assert endpoints["audio_transcriptions"] == 6
    assert endpoints["audio_speech"] == 5  # failed, fallback, whole, cut, left
    assert endpoints["rerank"] == 2


@pytest.mark.parametrize(
    ("name", "status", "param"),
    [
        ("bad_json", 400, None),
        ("unknown_model", 404, "model"),
        ("no_file", 400, "file"),
        ("no_key", 401, None),
        ("get", 405, None),
        ("no_voice", 400, "voice"),
    ],
)
def test_errors_are_openai_shaped(run: dict[str, Any], name: str, status: int, param: str) -> None:
    response: httpx.Response = run["errors"][name]
    assert response.status_code == status, response.text
    assert response.headers["x-request-id"].startswith("req_")
    body = orjson.loads(response.content)
    check(ERROR, body)
    assert body["error"]["param"] == param


def test_speech_create_reads_the_whole_audio(run: dict[str, Any]) -> None:
    headers, audio = run["speech_whole"]
    assert headers["content-type"] == "audio/wav" and len(audio) == len("Hi there") * 64


def test_model_after_the_file_is_routed_once_the_file_is_spooled(run: dict[str, Any]) -> None:
    response: httpx.Response = run["model_last"]
    assert response.status_code == 200, response.text
    check("CreateTranscriptionResponseJson", response.json())
    [attempt] = _attempts(run["db"], response.headers["x-request-id"])
    assert (attempt.deployment, _dec(attempt.units)) == ("whisper@sim", Decimal(3))
    assert {"model": "whisper-1", "bytes": 96_000} in [
        {k: u[k] for k in ("model", "bytes")} for u in run["uploads"]
    ]


def test_an_upload_cut_mid_file_is_the_clients_400(run: dict[str, Any]) -> None:
    response: httpx.Response = run["cut_upload"]
    assert response.status_code == 400, response.text
    check(ERROR, response.json())
    assert response.json()["error"]["code"] == "invalid_multipart"
    request_id = response.headers["x-request-id"]
    # The upstream call had begun (streaming the file): one free attempt, the client's fault.
    [attempt] = _attempts(run["db"], request_id)
    assert (attempt.error_class, _dec(attempt.cost_usd)) == ("client_body", Decimal(0))
    row = _request(run["db"], request_id)
    assert (row.final_status, row.error_class) == (400, "client_body")


def test_key_routes_and_rate_limits_apply(run: dict[str, Any]) -> None:
    image, *moderations = run["limited"]
    assert image.status_code == 403 and image.json()["error"]["code"] == "route_not_allowed"
    assert [r.status_code for r in moderations] == [200, 200, 429]
    check(ERROR, moderations[-1].json())


def test_speech_client_leaving_mid_body_is_a_499(run: dict[str, Any]) -> None:
    request_id = run["speech_left_id"]
    [attempt] = _attempts(run["db"], request_id)
    assert attempt.error_class == "client_cancelled"
    assert _dec(attempt.units) == len(SPEECH_TEXT)  # billed: the audio was being made
    row = _request(run["db"], request_id)
    assert (row.final_status, row.error_class) == (499, "client_cancelled")
