"""Answer checks on the wire (issue 27), through the OpenAI and Anthropic SDKs unchanged.

The simulator's `echo` answers with the prompt it was sent, in small chunks when streamed,
so every personal value of the labelled set comes back split across chunk boundaries: a
route that masks answers must give the client, whatever the chunks, exactly the masking of
the whole answer, and never one of the values. A block check cuts the answer where its
finding starts and ends it in each API's own words (`content_filter`, `refusal`,
`incomplete`); the ledger says so, and the request is not a successful one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import anthropic
import openai
import pytest

from routing.answer_guard import AnswerGuard
from routing.guard import BLOCK, MASK, Check
from routing.pii import EMAIL, KINDS, SECRET
from tests.conftest import SIM_KEY, sqlite_settings
from tests.gateway_harness import RunningGateway, config_from_yaml, running_gateway
from tests.guard_corpus import corpus
from tests.ledger_reads import ledger_url, sql_rows
from tests.simulator import simulator_stats
from tests.waiting import wait_until
from tests.wire_recorder import validated_openai

pytestmark = pytest.mark.e2e

KEY = "sk-guard-answers-e2e-01"
SAID = "Reach ann.lee@example.org or +44 20 7946 0958; card 4111 1111 1111 1111. Thanks!"
CONFIG = """
auth: {keys: [{name: g, key: "CLIENT_KEY"}]}
providers:
  closed: {kind: closed_api, protocol: openai, api_base: "${SIM_URL}/v1", api_key: "${SIM_KEY}"}
  native:
    kind: closed_api
    protocol: openai
    api_base: "${SIM_URL}/v1"
    api_key: "${SIM_KEY}"
    responses_api: true
deployments:
  echo@closed: {provider: closed, model: "answers-echo::echo", price: {input: 0.1, output: 0.2}}
  said@native: {provider: native, model: "answers-said::reply=SAID", price: {input: 1, output: 2}}
routes:
  leaky:
    targets: [echo@closed]
    guard:
      - {name: leaks, detect: [email, phone, card, secret, iban, ip], reads: [answer], action: mask}
  said:
    targets: [said@native]
    guard:
      - {name: leaks, detect: [email, phone, card, secret, iban, ip], reads: [answer], action: mask}
  withheld:
    targets: [echo@closed]
    guard:
      - {name: no-keys, detect: [secret], reads: [answer], action: block}
      - {name: mail, detect: [email], reads: [answer], action: mask}
""".replace("CLIENT_KEY", KEY).replace("SAID", quote(SAID, safe=""))

LEAKS = (Check("leaks", MASK, kinds=KINDS, on_request=False, on_answer=True),)
WITHHELD = (
    Check("no-keys", BLOCK, kinds=(SECRET,), on_request=False, on_answer=True),
    Check("mail", MASK, kinds=(EMAIL,), on_request=False, on_answer=True),
)
PII = [s for s in corpus() if s.labels]
SECRET_KEY = "sk-proj-ABCDEFGHIJ0123456789ab"
KEY_TEXT = f"Mail bo@example.com. {'Some words. ' * 12}The key: {SECRET_KEY} ok"


def _masked(checks: tuple[Check, ...], text: str) -> str:
    return AnswerGuard(checks).text(text)


@pytest.fixture(scope="module")
def gw(simulator: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    config = config_from_yaml(CONFIG, {"SIM_URL": simulator, "SIM_KEY": SIM_KEY})
    with running_gateway(config, sqlite_settings(tmp_path_factory.mktemp("answers"))) as running:
        yield running


@pytest.fixture
def client(gw: RunningGateway) -> Iterator[openai.OpenAI]:
    """Every body and stream event the SDK gets is validated against the OpenAI spec."""
    yield from validated_openai(gw.base_url, KEY)


def _user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def test_streamed_answers_are_masked_whatever_the_chunks(client: openai.OpenAI) -> None:
    """Every PII prompt of the labelled set, echoed back in chunks: the client reads the
    whole answer's masking, never a value."""
    for sample in PII:
        stream = client.chat.completions.create(
            model="leaky", messages=_user(sample.text), stream=True
        )
        chunks = [c for c in stream if c.choices]
        seen = "".join(c.choices[0].delta.content or "" for c in chunks)
        assert seen == _masked(LEAKS, sample.text), sample.text
        for _kind, value in sample.labels:
            assert value not in seen, (value, seen)
        assert chunks[-1].choices[0].finish_reason == "stop"


def test_whole_answers_are_masked(client: openai.OpenAI) -> None:
    for sample in PII[::7]:
        raw = client.chat.completions.with_raw_response.create(
            model="leaky", messages=_user(sample.text)
        )
        assert raw.parse().choices[0].message.content == _masked(LEAKS, sample.text)
        assert raw.headers["x-farebox-guard"] == "mask; answer-masked=leaks"


def test_anthropic_and_responses_answers_are_masked(
    gw: RunningGateway, client: openai.OpenAI
) -> None:
    text = PII[3].text + " and " + PII[100].text
    expected = _masked(LEAKS, text)
    claude = anthropic.Anthropic(base_url=gw.root, api_key=KEY, max_retries=0, timeout=10)
    with claude.messages.stream(model="leaky", max_tokens=512, messages=_user(text)) as stream:
        assert "".join(stream.text_stream) == expected
    message = claude.messages.create(model="leaky", max_tokens=512, messages=_user(text))
    assert message.content[0].text == expected  # type: ignore[union-attr]
    # Responses translated from the chat deployment, then a native Responses upstream.
    assert client.responses.create(model="leaky", input=text).output_text == expected
    with client.responses.stream(model="leaky", input=text) as stream:
        deltas = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert deltas == expected == final.output_text
    said = _masked(LEAKS, SAID)
    assert "ann.lee" not in said
    assert client.responses.create(model="said", input="hi").output_text == said
    with client.responses.stream(model="said", input="hi") as stream:
        events = list(stream)
        final = stream.get_final_response()
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = [e.text for e in events if e.type == "response.output_text.done"]
    assert deltas == said == final.output_text and done == [said]


def test_a_blocked_answer_is_withheld_in_each_api_s_words(
    gw: RunningGateway, client: openai.OpenAI
) -> None:
    cut = "Mail <EMAIL_1>. " + "Some words. " * 12 + "The key: "
    stream = client.chat.completions.create(model="withheld", messages=_user(KEY_TEXT), stream=True)
    chunks = [c for c in stream if c.choices]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == cut
    assert chunks[-1].choices[0].finish_reason == "content_filter"
    raw = client.chat.completions.with_raw_response.create(
        model="withheld", messages=_user(KEY_TEXT)
    )
    choice = raw.parse().choices[0]
    assert (choice.message.content, choice.finish_reason) == (cut, "content_filter")
    assert raw.headers["x-farebox-guard"] == "block; answer-blocked=no-keys; answer-masked=mail"
    claude = anthropic.Anthropic(base_url=gw.root, api_key=KEY, max_retries=0, timeout=10)
    message = claude.messages.create(model="withheld", max_tokens=512, messages=_user(KEY_TEXT))
    assert message.stop_reason == "refusal"
    assert "sk-proj" not in str(message.content)
    response = client.responses.create(model="withheld", input=KEY_TEXT)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "content_filter"
    assert response.output_text == cut
    with client.responses.stream(model="withheld", input=KEY_TEXT) as events:
        kinds = [e.type for e in events]
    assert kinds[-1] == "response.incomplete"


def test_the_ledger_records_what_the_answer_checks_did(
    gw: RunningGateway, client: openai.OpenAI, simulator: str
) -> None:
    """A withheld answer's request is not successful (error class guardrail_blocked), its
    `requests.guard` says which checks fired; attempts equal the simulator's calls."""
    raw = client.chat.completions.with_raw_response.create(
        model="withheld", messages=_user(KEY_TEXT)
    )
    request_id = raw.headers["x-request-id"]
    url = ledger_url(gw)
    query = "SELECT final_status, error_class, guard FROM requests WHERE id = :id"

    def row() -> list[tuple[Any, ...]]:
        return sql_rows(url, query, {"id": request_id})

    wait_until(lambda: bool(row()), "the withheld request's row")
    guard = "block; answer-blocked=no-keys; answer-masked=mail"
    assert row() == [(200, "guardrail_blocked", guard)]
    calls = {
        "echo@closed": int(simulator_stats(simulator)["requests"]["answers-echo"]["total"]),
        "said@native": int(simulator_stats(simulator)["requests"]["answers-said"]["total"]),
    }

    def attempts() -> dict[str, int]:
        found = sql_rows(url, "SELECT deployment, COUNT(*) FROM attempts GROUP BY deployment")
        return {deployment: count for deployment, count in found if deployment in calls}

    wait_until(lambda: attempts() == calls, f"attempts {attempts()} == simulator calls {calls}")
