"""Router training data: prompts with per-model correctness, read from CSV or JSON lines.

The shape is RouteLLM's MMLU response files: a `prompt` column and one True/False column per
model, named after the model. JSON lines may carry `messages` instead of `prompt` (the text is
then what the router sees at run time: routing.quality_model.text_of). Every row belongs to a
group — its `subject` field, else the file's name (`mmlu_anatomy.csv` → `anatomy`) — and
cross-validation holds out whole groups.

A `contaminated_prompts.jsonl` beside a data file (RouteLLM's decontamination list) is applied
automatically: rows whose prompt equals one of its `eval_prompt`s are dropped.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from routing.quality_model import text_of

DEFAULT_WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
DEFAULT_STRONG = "gpt-4-1106-preview"
CONTAMINATED = "contaminated_prompts.jsonl"
_TRUE = {"true", "1", "1.0", "yes", "correct"}
_FALSE = {"false", "0", "0.0", "no", "incorrect", "wrong"}


class DataError(ValueError):
    """A data file that cannot be used, with the file and line in the message."""


@dataclass(frozen=True, slots=True)
class Example:
    text: str
    weak: float  # 1.0 = the weak model answered correctly (fractions allowed: graded scores)
    strong: float
    group: str


def _outcome(value: Any, where: str, column: str) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        if 0 <= value <= 1:
            return float(value)
    elif isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return 1.0
        if lowered in _FALSE:
            return 0.0
        try:
            number = float(lowered)
        except ValueError:
            pass
        else:
            if 0 <= number <= 1:
                return number
    raise DataError(f"{where}: column {column!r} must be true/false or a score in [0, 1]")


def group_of(path: Path) -> str:
    """`mmlu_college_physics.csv` → `college_physics`; other files → their stem."""
    stem = path.stem
    return stem.split("_", 1)[1] if stem.startswith("mmlu_") and "_" in stem else stem


def expand(paths: Iterable[Path]) -> list[Path]:
    """Files as given; a directory stands for its *.csv and *.jsonl files (sorted)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(
                p
                for p in path.iterdir()
                if p.suffix in (".csv", ".jsonl") and p.name != CONTAMINATED
            )
            if not found:
                raise DataError(f"{path}: no .csv or .jsonl files in this directory")
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            raise DataError(f"{path}: no such file or directory")
    return files


def contaminated(files: Iterable[Path]) -> set[str]:
    """The eval prompts listed in contaminated_prompts.jsonl files beside `files`."""
    prompts: set[str] = set()
    for folder in sorted({f.parent for f in files}):
        listing = folder / CONTAMINATED
        if not listing.exists():
            continue
        for number, line in enumerate(listing.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{listing}:{number}: not JSON: {exc.msg}") from None
            if isinstance(item, dict) and isinstance(item.get("eval_prompt"), str):
                prompts.add(item["eval_prompt"])
    return prompts


def _example(
    row: Mapping[str, Any], where: str, path: Path, weak: str, strong: str, prompt: str
) -> Example:
    value = row.get(prompt)
    text = value if isinstance(value, str) else text_of(row)
    if not text:
        raise DataError(f"{where}: no {prompt!r} text (or chat 'messages')")
    for column in (weak, strong):
        if column not in row:
            raise DataError(f"{where}: missing column {column!r}")
    group = row.get("subject")
    return Example(
        text=text,
        weak=_outcome(row[weak], where, weak),
        strong=_outcome(row[strong], where, strong),
        group=group if isinstance(group, str) and group else group_of(path),
    )


def _rows(path: Path) -> Iterable[tuple[str, Mapping[str, Any]]]:
    if path.suffix == ".csv":
        csv.field_size_limit(sys.maxsize)
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            for row in reader:
                yield f"{path}:{reader.line_num}", row
        return
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: not JSON: {exc.msg}") from None
            if not isinstance(item, dict):
                raise DataError(f"{path}:{number}: expected a JSON object")
            yield f"{path}:{number}", item


def load(
    paths: Iterable[Path],
    weak: str = DEFAULT_WEAK,
    strong: str = DEFAULT_STRONG,
    prompt: str = "prompt",
) -> tuple[list[Example], int]:
    """(examples, rows dropped as contaminated) from files or directories of CSV/JSONL."""
    files = expand(paths)
    drop = contaminated(files)
    examples: list[Example] = []
    dropped = 0
    for path in files:
        if path.suffix not in (".csv", ".jsonl", ".json"):
            raise DataError(f"{path}: expected a .csv or .jsonl file")
        try:
            for where, row in _rows(path):
                example = _example(row, where, path, weak, strong, prompt)
                if example.text in drop:
                    dropped += 1
                    continue
                examples.append(example)
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise DataError(f"{path}: cannot read: {exc}") from None
    if not examples:
        raise DataError("no examples in the data")
    return examples, dropped
