"""The simulator's ``empty_when`` directive, over real HTTP (issue 28's hidden rule): a
model that answers nothing on prompts holding a marker — all of them, or a fixed share
chosen by the prompt's hash — so a ``non_empty`` gate fails exactly those."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from routing.gates import GateSpec, check
from tests.simulator import start_simulator


@pytest.fixture(scope="module")
def client() -> Iterator[openai.OpenAI]:
    url, stop = start_simulator(seed=3)
    yield openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
    stop()


def _completion(client: openai.OpenAI, model: str, text: str) -> dict[str, Any]:
    completion = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}]
    )
    assert completion.choices[0].finish_reason == "stop"
    return completion.model_dump(mode="json")


def _answer(client: openai.OpenAI, model: str, text: str) -> str:
    content = _completion(client, model, text)["choices"][0]["message"]["content"]
    return str(content or "")


def test_prompts_with_the_marker_get_an_empty_answer(client: openai.OpenAI) -> None:
    model = "weak::tokens=4,empty_when=Integral"
    gate = GateSpec(non_empty=True)
    failed = _completion(client, model, "Compute the INTEGRAL of x dx")
    assert failed["choices"][0]["message"]["content"] in ("", None)
    assert not check(gate, None, failed).passed
    answered = _completion(client, model, "Name the capital of France")
    assert answered["choices"][0]["message"]["content"]
    assert check(gate, None, answered).passed


def test_a_rate_fails_a_share_of_them_and_the_same_prompt_every_time(
    client: openai.OpenAI,
) -> None:
    model = "weak::tokens=4,empty_when=integral,empty_rate=0.5"
    texts = [f"integral number {i}" for i in range(200)]
    first = [_answer(client, model, t) == "" for t in texts]
    assert 70 <= sum(first) <= 130
    assert [_answer(client, model, t) == "" for t in texts[:40]] == first[:40]


def test_a_rate_without_a_marker_is_a_directive_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        _answer(client, "weak::empty_rate=0.5", "hello")
    with pytest.raises(openai.BadRequestError):
        _answer(client, "weak::empty_when=", "hello")
