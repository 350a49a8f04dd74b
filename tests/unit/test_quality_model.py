"""The quality router's pure parts: features, scoring, request text, and RouteLLM's metrics."""

from __future__ import annotations

import math
import random
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing.quality_features import (
    FeatureConfig,
    extract,
    lexical_indices,
    structural,
    tokens,
    with_pairs,
)
from routing.quality_model import FORMAT, VERSION, QualityModel, text_of
from routing.router_metrics import cpt, evaluate, pgr_curve, quantile

MMLU = """Find the degree for the given field extension Q(sqrt(2), sqrt(3)) over Q.
A. 0
B. 4
C. 2
D. 6
Answer:"""


def model_dict(**overrides: Any) -> dict[str, Any]:
    config = FeatureConfig(hash_bits=12)
    words = tokens(MMLU, config)[2]
    indices, _ = lexical_indices(words, config)
    doc: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "features": config.as_dict(),
        "bias": -0.1,
        "calibration": {"a": 3.0, "b": -1.0},
        "structural": {"opt_numeric": 0.5, "len": -0.2, "unknown_feature": 9.0},
        "lexical": {"indices": sorted(set(indices))[:5], "values": [0.1, -0.2, 0.3, 0.05, 0.0]},
        "quantiles": [i / 20 for i in range(21)],
        "meta": {"examples": 3},
    }
    doc.update(overrides)
    return doc


# --- features ---------------------------------------------------------------------------


def test_features_are_deterministic_and_use_crc32() -> None:
    config = FeatureConfig()
    assert extract(MMLU, config) == extract(MMLU, config)
    indices, value = lexical_indices(["hello"], config)
    # CRC-32, not hash(): the same index in every process, whatever PYTHONHASHSEED is.
    assert indices == [zlib.crc32(b"hello") & ((1 << 18) - 1)]
    assert value == pytest.approx(1.0)


def test_lexical_group_is_l2_normalised() -> None:
    config = FeatureConfig(text_scale=0.5)
    lex, _ = extract("the quick brown fox jumps over the lazy dog " * 3, config)
    assert math.sqrt(sum(v * v for v in lex.values())) == pytest.approx(0.5)


def test_structural_reads_answer_options() -> None:
    window, lower, words, length = tokens(MMLU, FeatureConfig())
    feats = structural(window, lower, words, length)
    assert feats["options"] == 1.0
    assert feats["opt_numeric"] == 1.0
    assert feats["calc"] == 1.0  # "Find the …"
    assert "statements" not in feats
    assert 0 < feats["len"] < 1


def test_roman_numeral_statements_are_not_options() -> None:
    text = "Which are true?\nI. The sky is blue.\nII. Grass is red.\nA. I only\nB. II only\nC. Both"
    window, lower, words, length = tokens(text, FeatureConfig())
    feats = structural(window, lower, words, length)
    assert feats["options"] == 1.0
    # Three options A-C, each a few characters: "I." did not start the run.
    assert feats["opt_max"] == pytest.approx(math.log1p(len("II only")) / 5)


def test_plain_chat_prompt_has_no_option_features() -> None:
    window, lower, words, length = tokens("Write a haiku about rain.", FeatureConfig())
    feats = structural(window, lower, words, length)
    assert "options" not in feats
    assert "opt_len" not in feats


def test_long_prompt_is_read_through_a_window_but_length_is_whole() -> None:
    config = FeatureConfig(max_chars=1000)
    text = "word " * 10_000
    window, _, _, length = tokens(text, config)
    assert len(window) <= 1001
    assert length == len(text)


# --- model ------------------------------------------------------------------------------


def test_model_round_trips_through_its_dict() -> None:
    model = QualityModel.from_dict(model_dict())
    again = QualityModel.from_dict(model.as_dict())
    assert again.score(MMLU) == pytest.approx(model.score(MMLU), rel=1e-4)
    assert again.meta == {"examples": 3}


def test_score_is_the_calibrated_linear_output() -> None:
    model = QualityModel.from_dict(model_dict())
    raw = model.raw(MMLU)
    assert model.score(MMLU) == pytest.approx(1 / (1 + math.exp(-(3.0 * raw - 1.0))))
    # Unknown structural names in a file are ignored, not an error.
    assert "unknown_feature" in model.structural


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=3000))
def test_score_is_a_probability_for_any_text(text: str) -> None:
    doc = model_dict(calibration={"a": 1e6, "b": 0.0}, bias=5.0)
    score = QualityModel.from_dict(doc).score(text)
    assert 0.0 <= score <= 1.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "other"}, "not a quality router model"),
        ({"version": 99}, "unsupported"),
        ({"bias": "x"}, "'bias' must be a finite number"),
        ({"bias": float("nan")}, "'bias' must be a finite number"),
        ({"lexical": {"indices": [1, 2], "values": [0.1]}}, "differ in length"),
        ({"lexical": {"indices": [1 << 12], "values": [0.1]}}, "outside the hash space"),
        ({"features": {"hash_bits": 40}}, "hash_bits"),
        ({"structural": {"len": True}}, "structural weight"),
    ],
)
def test_malformed_model_documents_are_rejected(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        QualityModel.from_dict(model_dict(**change))


def test_threshold_for_share_reads_the_training_quantiles() -> None:
    model = QualityModel.from_dict(model_dict())
    assert model.threshold_for_share(0.3) == pytest.approx(0.7)
    assert model.threshold_for_share(1.0) == -math.inf
    assert model.threshold_for_share(0.0) == math.inf


# --- text_of ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"prompt": "hi"}, "hi"),
        ({"prompt": ["a", "b"]}, "a\nb"),
        ({"messages": [{"role": "user", "content": "q"}]}, "q"),
        (
            {
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "first"},
                    {"role": "assistant", "content": "answer"},
                    {"role": "user", "content": "second"},
                ]
            },
            "second",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "look"},
                            {"type": "image_url", "image_url": {"url": "x"}},
                            {"type": "text", "text": "here"},
                        ],
                    }
                ]
            },
            "look\nhere",
        ),
        ({"messages": [{"role": "system", "content": "only a system turn"}]}, "only a system turn"),
        ({"messages": [{"role": "user", "content": ""}, "junk", 3]}, ""),
        ({"messages": "not a list"}, ""),
        ({}, ""),
    ],
)
def test_text_of(payload: dict[str, Any], expected: str) -> None:
    assert text_of(payload) == expected


def test_score_payload_is_none_without_text() -> None:
    model = QualityModel.from_dict(model_dict())
    assert model.score_payload({"messages": []}) is None
    assert model.score_payload({"prompt": MMLU}) == model.score(MMLU)


# --- metrics ----------------------------------------------------------------------------


def test_quantile_interpolates_like_numpy() -> None:
    values = [1.0, 2.0, 4.0, 8.0]
    assert quantile(values, 0.0) == 1.0
    assert quantile(values, 1.0) == 8.0
    assert quantile(values, 0.5) == 3.0
    assert quantile(values, 0.9) == pytest.approx(6.8)


def test_a_router_where_strong_share_is_pgr() -> None:
    # Weak always wrong, strong always right: quality = share, so PGR = share everywhere.
    scores = [float(i) for i in range(10)]
    report = evaluate(scores, [0.0] * 10, [1.0] * 10)
    assert [p.strong_share for p in report.curve] == pytest.approx([i / 10 for i in range(11)])
    assert report.apgr == pytest.approx(0.5)
    assert report.cpt50 == pytest.approx(0.5)
    assert report.cpt80 == pytest.approx(0.8)


def test_perfect_router_with_tied_scores() -> None:
    # Two prompts need the strong model, eight do not; scores tie within each kind.
    weak = [0.0, 0.0] + [1.0] * 8
    strong = [1.0] * 10
    scores = [1.0, 1.0] + [0.0] * 8
    report = evaluate(scores, weak, strong)
    # Thresholds: 0 (×8 levels, all strong), 0.2 and 1 (the two), 1 with ">" (none).
    shares = [p.strong_share for p in report.curve]
    assert shares == pytest.approx([0.0, 0.2, 0.2] + [1.0] * 8)
    # Area 0.2·(0.8+1)/2 + 0.8·1 = 0.98; (0.98 − 0.8) / (1.0 − 0.8) = 0.9.
    assert report.apgr == pytest.approx(0.9)
    assert report.cpt50 == pytest.approx(0.1)
    assert report.cpt80 == pytest.approx(0.16)


def test_random_router_scores_about_half() -> None:
    rng = random.Random(7)
    n = 4000
    weak = [float(rng.random() < 0.7) for _ in range(n)]
    strong = [float(rng.random() < 0.8) for _ in range(n)]
    apgrs = [evaluate([rng.random() for _ in range(n)], weak, strong).apgr for _ in range(10)]
    assert sum(apgrs) / len(apgrs) == pytest.approx(0.5, abs=0.03)


def test_oracle_beats_random_and_reverse_loses() -> None:
    rng = random.Random(3)
    n = 2000
    weak = [float(rng.random() < 0.7) for _ in range(n)]
    strong = [float(rng.random() < 0.8) for _ in range(n)]
    noise = [rng.random() * 1e-3 for _ in range(n)]
    oracle = [s - w + e for s, w, e in zip(strong, weak, noise, strict=True)]
    best = evaluate(oracle, weak, strong)
    worst = evaluate([-x for x in oracle], weak, strong)
    assert best.apgr > 1.0  # it also keeps what only the weak model gets right
    assert worst.apgr < 0.0
    assert best.cpt80 is not None and best.cpt80 < 0.5


def test_cpt_takes_the_first_crossing_and_never_when_unreached() -> None:
    curve = pgr_curve([0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 1.0, 1.0])
    assert cpt(curve, 0.5) is not None
    assert cpt(curve, 5.0) is None


def test_metrics_reject_mismatched_input_and_tied_models() -> None:
    with pytest.raises(ValueError):
        evaluate([0.1], [1.0, 0.0], [1.0])
    with pytest.raises(ValueError):
        evaluate([], [], [])
    report = evaluate([0.1, 0.2], [1.0, 0.0], [1.0, 0.0])
    assert math.isnan(report.apgr)
    assert report.cpt50 is None


def test_pair_weights_score_the_products_of_structural_features() -> None:
    config = FeatureConfig(hash_bits=12, pairs=True)
    window, lower, words, length = tokens(MMLU, config)
    feats = with_pairs(structural(window, lower, words, length))
    assert feats["digits*options"] == pytest.approx(feats["digits"])
    weights = {"digits": 0.3, "digits*options": -0.5, "len*len": 2.0, "calc*digits": 0.25}
    doc = model_dict(features=config.as_dict(), structural=weights, lexical={})
    model = QualityModel.from_dict(doc)
    expected = -0.1 + sum(w * feats.get(name, 0.0) for name, w in weights.items())
    assert model.raw(MMLU) == pytest.approx(expected)


def test_structural_values_are_clamped_to_the_training_range() -> None:
    doc = model_dict(structural={"len": 1.0}, lexical={}, ranges={"len": [0.5, 0.6]})
    model = QualityModel.from_dict(doc)
    assert model.raw("hi") == pytest.approx(-0.1 + 0.5)  # len("hi") is below the range
    assert model.raw("x" * 100_000) == pytest.approx(-0.1 + 0.6)
    assert QualityModel.from_dict(model.as_dict()).ranges == {"len": (0.5, 0.6)}
    with pytest.raises(ValueError, match="ranges"):
        QualityModel.from_dict(model_dict(ranges={"len": 3}))
