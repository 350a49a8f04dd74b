"""Answer checks (routing/answer_guard.py): a whole answer and the same answer streamed in
pieces cut anywhere come out masked alike, every labelled value of the corpus replaced;
a block cuts the answer where its finding starts and nothing of the finding goes out."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing.answer_guard import HOLD, AnswerGuard
from routing.guard import BLOCK, FLAG, MASK, Check
from routing.pii import CARD, EMAIL, KINDS, SECRET, Custom
from tests.guard_corpus import corpus

SAMPLES = corpus()
MASK_ALL = (Check("leaks", MASK, kinds=KINDS, on_request=False, on_answer=True),)


def _streamed(guard: AnswerGuard, text: str, cuts: list[int]) -> str:
    channel = guard.channel()
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    return "".join(channel.feed(p) for p in pieces) + channel.finish()


def _cuts(text: str, rng: random.Random) -> list[int]:
    return sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 12))))


@pytest.mark.parametrize("sample", [s for s in SAMPLES if s.labels], ids=lambda s: s.text[:30])
def test_every_value_is_masked_streamed_or_whole(sample) -> None:  # type: ignore[no-untyped-def]
    # Long enough that the hold is passed mid-stream: the prompt repeated around filler.
    text = f"{sample.text} and so on {'x ' * HOLD}then {sample.text}"
    whole = AnswerGuard(MASK_ALL).text(text)
    rng = random.Random(sample.text)
    for _ in range(5):
        streamed = _streamed(AnswerGuard(MASK_ALL), text, _cuts(text, rng))
        assert streamed == whole
    for _kind, value in sample.labels:
        assert value not in whole


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.text(alphabet="ab .\n@-", max_size=80),
    cuts=st.lists(st.integers(min_value=1, max_value=400), max_size=20),
)
def test_any_split_gives_the_whole_answer_s_masking(prefix: str, cuts: list[int]) -> None:
    text = f"{prefix} write to ann.lee@example.org or call +44 20 7946 0958 {prefix} card "
    text += "4111 1111 1111 1111 " + prefix
    whole = AnswerGuard(MASK_ALL).text(text)
    assert "ann.lee@example.org" not in whole and "4111 1111 1111 1111" not in whole
    cut_at = sorted({c for c in cuts if c < len(text)})
    assert _streamed(AnswerGuard(MASK_ALL), text, cut_at) == whole


def test_the_same_value_gets_the_same_placeholder_across_texts() -> None:
    guard = AnswerGuard(MASK_ALL)
    first = guard.text("mail bo@example.com and al@example.com")
    second = guard.text("again al@example.com")
    assert first == "mail <EMAIL_1> and <EMAIL_2>"
    assert second == "again <EMAIL_2>"
    assert guard.hits == {"leaks": 3}


def test_a_block_cuts_the_answer_where_the_finding_starts() -> None:
    checks = (
        Check("no-keys", BLOCK, kinds=(SECRET,), on_request=False, on_answer=True),
        Check("mask-mail", MASK, kinds=(EMAIL,), on_request=False, on_answer=True),
    )
    key = "sk-" + "A1b2C3d4" * 6
    text = f"Mail bo@example.com. {'word ' * 30}The key is {key} and more text follows."
    guard = AnswerGuard(checks)
    streamed = _streamed(guard, text, list(range(3, len(text), 7)))
    assert key[:6] not in streamed
    assert streamed.startswith("Mail <EMAIL_1>.")
    assert streamed.endswith("The key is ")
    assert guard.blocked == "no-keys"
    assert guard.channel().feed("anything at all, " * 10) == ""  # withheld from here on
    assert guard.fired == {BLOCK: ["no-keys"], MASK: ["mask-mail"]}


def test_a_flag_counts_and_changes_nothing() -> None:
    guard = AnswerGuard((Check("seen", FLAG, kinds=(CARD,), on_request=False, on_answer=True),))
    text = "card 4111 1111 1111 1111 ok"
    assert guard.text(text) == text
    assert guard.hits == {"seen": 1}


def test_a_long_word_is_held_until_whole_then_masked() -> None:
    key = "sk-proj-" + "Zx9" * 60  # longer than the hold
    guard = AnswerGuard(MASK_ALL)
    channel = guard.channel()
    out = channel.feed("Here: ")
    for i in range(0, len(key), 5):
        out += channel.feed(key[i : i + 5])
        assert key[:12] not in out
    out += channel.feed(" done. " + "pad " * 20) + channel.finish()
    assert out.startswith("Here: <SECRET_1> done.")


def test_custom_terms_are_checked_on_answers() -> None:
    check = Check(
        "project",
        MASK,
        kinds=(),
        custom=(Custom.terms("PROJECT", ["Nightjar"]),),
        on_request=False,
        on_answer=True,
    )
    assert AnswerGuard((check,)).text("About nightjar.") == "About <PROJECT_1>."


def test_answer_placeholders_can_number_on_from_the_request_s() -> None:
    """gateway/api/call.py starts the answer's numbering after the request's placeholders,
    so restoring the request's values never touches what the answer checks masked."""
    guard = AnswerGuard(MASK_ALL)
    guard.masker.counts.update({EMAIL: 1})
    assert guard.text("from a@example.com") == "from <EMAIL_2>"
