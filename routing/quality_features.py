"""Prompt → sparse hashed features for the quality router (routing.quality_model).

Two families, both hashed into one index space so a model is a single sparse weight vector:

- lexical: lower-cased word unigrams and bigrams, binary, L2-normalised as a group so a long
  prompt does not get a larger score just for having more words;
- structural: cues that carry across subjects better than vocabulary does — length of the
  question and of its answer options, digit and formula density, logic and code symbols,
  question-type phrases ("which of the following", NOT/EXCEPT, "Statement 1 |"), and the
  share of distinct words.

Hashing uses CRC-32 (stable across processes, unlike `hash()`, and done in C: the whole
extraction stays well under a millisecond for a 2 KB prompt). Very long prompts are read
through a window (head and tail, where the instruction and the question usually are); the
length features still see the full length.
"""

from __future__ import annotations

import itertools
import math
import re
import zlib
from dataclasses import dataclass

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
# An answer option line as MMLU-style prompts write them: "A. text" or "(B) text".
_OPTION = re.compile(r"^[ \t]*\(?([A-J])[.)][ \t]+(.*\S)?[ \t]*$", re.MULTILINE)
_NUMERIC = re.compile(r"^[\s$€£(−\-+]*\d[\d\s.,/%^()×x*−\-+a-z√π]*$", re.IGNORECASE)
# Character classes are counted with one str.count per character: each a C scan, together
# many times faster than a generator over the text (or str.translate, a dict lookup per char).
_DIGITS = "0123456789"
_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_MATH = "=+*/^<>√∑∫π≤≥±×÷$\\"
# Cue phrases, looked up as substrings (of the lower-cased text unless noted): cheaper than
# regex alternations, and the cues are distinctive enough not to need word boundaries.
_CODE = ("```", "def ", "return ", "{", "};", "==", "!=", "++", "->", "printf", "#include")
_NEGATION = (" NOT ", " EXCEPT", " LEAST ", "not true", " false")  # case-sensitive: stem
_CALC = (
    "calculate", "compute", "how many", "how much", "what is the value", "solve",
    "probability", "evaluate", "estimate", "find the", "determine the",
)  # fmt: skip
_ABOVE = ("of the above", "of these")
_BIGRAM = 0x9E3779B1  # mixes the first word's hash into a bigram's


@dataclass(frozen=True, slots=True)
class FeatureConfig:
    """How text becomes features; stored with the weights so a model is self-describing."""

    hash_bits: int = 18
    bigrams: bool = True
    structural: bool = True
    pairs: bool = True  # also products of structural features (a*b): cheap interactions
    text_scale: float = 1.0  # weight of the L2-normalised lexical group vs the structural one
    max_chars: int = 4096  # window read: the first 3/4 and last 1/4 (bounds the cost)

    def as_dict(self) -> dict[str, object]:
        return {
            "hash_bits": self.hash_bits,
            "bigrams": self.bigrams,
            "structural": self.structural,
            "pairs": self.pairs,
            "text_scale": self.text_scale,
            "max_chars": self.max_chars,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> FeatureConfig:
        def num(key: str, default: float) -> float:
            value = data.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"feature config {key!r} must be a number")
            return float(value)

        def flag(key: str, default: bool) -> bool:
            value = data.get(key, default)
            if not isinstance(value, bool):
                raise ValueError(f"feature config {key!r} must be true or false")
            return value

        bits = int(num("hash_bits", 18))
        if not 8 <= bits <= 24:
            raise ValueError("feature config 'hash_bits' must be between 8 and 24")
        return cls(
            hash_bits=bits,
            bigrams=flag("bigrams", True),
            structural=flag("structural", True),
            pairs=flag("pairs", False),
            text_scale=num("text_scale", 1.0),
            max_chars=max(256, int(num("max_chars", 4096))),
        )


def _window(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    head = limit * 3 // 4
    return text[:head] + "\n" + text[len(text) - (limit - head) :]


def _count(text: str, chars: str) -> int:
    return sum(map(text.count, chars))


def _options(text: str) -> tuple[int, list[str]]:
    """(start of the first option line, option texts) for a run of options A, B, C, …

    Requiring the run to start at A and go on letter by letter keeps a list of roman-numeral
    statements ("I. …", "II. …") or a stray "e.g." line from passing for answer options.
    """
    found: list[str] = []
    start = -1
    for m in _OPTION.finditer(text):
        letter = m.group(1)
        if letter == "A":
            found, start = [m.group(2) or ""], m.start()
        elif found and ord(letter) == ord("A") + len(found):
            found.append(m.group(2) or "")
    return (start, found) if len(found) >= 2 else (-1, [])


def structural(
    text: str, lower: str, words: list[str], full_length: int | None = None
) -> dict[str, float]:
    """Named structural features, each roughly in [0, 1] (logs are divided down to that).

    `lower` and `words` are `text` lower-cased and its words; `full_length` is the length of
    the whole prompt when `text` is only a window of it.
    """
    length = len(text) if full_length is None else full_length
    start, options = _options(text)
    stem = text[:start] if start >= 0 else text
    lower_stem = lower[:start] if start >= 0 else lower
    n = len(text) + 1
    feats: dict[str, float] = {
        "len": math.log1p(length) / 8,
        "stem_len": math.log1p(len(stem)) / 8,
        "digits": min(1.0, 5 * _count(text, _DIGITS) / n),
        "math": min(1.0, 10 * _count(text, _MATH) / n),
        "lines": min(1.0, text.count("\n") / 20),
        "questions": min(1.0, text.count("?") / 3),
        "upper": min(1.0, 5 * _count(stem, _UPPER) / (len(stem) + 1)),
        # UTF-8 bytes beyond one per character: a cheap count of non-ASCII text.
        "non_ascii": min(1.0, 5 * (len(text.encode()) - len(text)) / n),
    }
    if words:
        # Distinct-word ratio: low when the options restate the question or each other.
        feats["distinct"] = len(set(words)) / len(words)
        feats["word_len"] = min(1.0, sum(map(len, words)) / len(words) / 10)
    flags = {
        "code": any(cue in text for cue in _CODE),
        "negation": any(cue in stem for cue in _NEGATION),
        "which": "which of the following" in lower_stem,
        "calc": any(cue in lower_stem for cue in _CALC),
        "above": any(cue in lower for cue in _ABOVE),
        "statements": "Statement 1" in text,
        "passage": len(stem) > 1200 or "refers to the following" in lower_stem,
    }
    feats.update({name: 1.0 for name, hit in flags.items() if hit})
    if options:
        opt_lens = [len(o) for o in options]
        numeric = sum(1 for o in options if _NUMERIC.match(o.strip()))
        opt_digits = _count("".join(options), _DIGITS)
        feats.update(
            {
                "options": 1.0,
                "opt_len": math.log1p(sum(opt_lens) / len(opt_lens)) / 5,
                "opt_max": math.log1p(max(opt_lens)) / 5,
                "opt_spread": (max(opt_lens) - min(opt_lens)) / (max(opt_lens) + 1),
                "opt_numeric": numeric / len(options),
                "opt_digits": min(1.0, 3 * opt_digits / (sum(opt_lens) + 1)),
                "opt_truefalse": float(all(("True" in o or "False" in o) for o in options)),
            }
        )
    return feats


def with_pairs(struct: dict[str, float]) -> dict[str, float]:
    """The features plus every product of two of them (squares too), named "a*b" with a <= b.

    A linear model over these is a quadratic one over the structural features: it can learn
    that, say, numeric options matter differently in short and long questions. Scoring does
    not build these names (QualityModel sums the products directly); training and tests do.
    """
    out = dict(struct)
    names = sorted(struct)
    for i, a in enumerate(names):
        for b in names[i:]:
            out[f"{a}*{b}"] = struct[a] * struct[b]
    return out


def lexical_indices(words: list[str], config: FeatureConfig) -> tuple[list[int], float]:
    """Hashed indices of the distinct word unigrams and bigrams, and the value each carries.

    Every token present gets the same value, text_scale / sqrt(distinct tokens): binary
    features, L2-normalised. An index repeats when two tokens collide in the hash space.
    Bigram hashes combine the two word hashes arithmetically rather than hashing a new string.
    """
    if not words:
        return [], 0.0
    mask = (1 << config.hash_bits) - 1
    hashes = [zlib.crc32(w.encode()) for w in words]
    distinct = set(hashes)
    if config.bigrams:
        pairs = itertools.pairwise(hashes)
        distinct.update([(a * _BIGRAM + b) & 0xFFFFFFFFFFFF for a, b in pairs])
    return [t & mask for t in distinct], config.text_scale / math.sqrt(len(distinct))


def lexical(words: list[str], config: FeatureConfig) -> dict[int, float]:
    """The lexical features as index → value (colliding tokens add up)."""
    indices, value = lexical_indices(words, config)
    out: dict[int, float] = {}
    for i in indices:
        out[i] = out.get(i, 0.0) + value
    return out


def tokens(text: str, config: FeatureConfig) -> tuple[str, str, list[str], int]:
    """(window, its lower-case form, its words, full length): the shared first pass."""
    window = _window(text, config.max_chars)
    lower = window.lower()
    return window, lower, _WORD.findall(lower), len(text)


def extract(text: str, config: FeatureConfig) -> tuple[dict[int, float], dict[str, float]]:
    """(hashed lexical features, named structural features) of `text`.

    The two are kept apart so structural weights never share a hash bucket with a word and
    stay readable by name in the model file.
    """
    window, lower, words, length = tokens(text, config)
    struct = structural(window, lower, words, length) if config.structural else {}
    return lexical(words, config), struct
