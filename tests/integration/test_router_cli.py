"""`farebox router`: train on a slice of the MMLU outcomes, score, evaluate, cross-validate;
and the model shipped in the package loads and decides in well under a millisecond."""

from __future__ import annotations

import csv
import json
import statistics
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.cli.main import app
from gateway.router.dataset import DEFAULT_STRONG, DEFAULT_WEAK
from gateway.router.model_io import DEFAULT_MODEL, load_model

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "router" / "mmlu"
SUBJECTS = ("abstract_algebra", "anatomy", "high_school_psychology", "formal_logic")
MMLU_PROMPT = "What is the capital of France?\nA. Paris\nB. Rome\nC. Lyon\nD. Nice\nAnswer:"


def synthetic_rows(subject: str, n: int) -> list[dict[str, str]]:
    """Rows shaped like the MMLU files, for when shared/ is not beside the checkout."""
    rows = []
    for i in range(n):
        hard = i % 3 == 0
        rows.append(
            {
                "prompt": f"{subject} question {i} {'compute the integral' if hard else 'name'}?"
                f"\nA. {i}\nB. {i + 1}\nC. x\nD. y\nAnswer:",
                DEFAULT_WEAK: str(not hard),
                DEFAULT_STRONG: "True",
            }
        )
    return rows


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 60 rows of four subjects (real data when available) and a contamination list."""
    folder = tmp_path_factory.mktemp("mmlu")
    for subject in SUBJECTS:
        source = DATA / f"mmlu_{subject}.csv"
        if source.exists():
            with source.open(newline="", encoding="utf-8") as handle:
                rows = [row for _, row in zip(range(60), csv.DictReader(handle), strict=False)]
        else:
            rows = synthetic_rows(subject, 60)
        with (folder / f"mmlu_{subject}.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["prompt", DEFAULT_WEAK, DEFAULT_STRONG])
            writer.writeheader()
            writer.writerows(rows)
            first = rows[0]["prompt"]
    (folder / "contaminated_prompts.jsonl").write_text(
        json.dumps({"train_prompt": first, "eval_prompt": first}) + "\n", encoding="utf-8"
    )
    return folder


def invoke(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["router", *args], input=stdin)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def trained(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model") / "router.json.gz"
    code, stdout, stderr = invoke("train", "--data", str(data_dir), "--out", str(out))
    assert code == 0, stderr
    assert "wrote" in stdout
    assert "1 contaminated rows dropped" in stderr
    assert "239 prompts in 4 groups" in stderr
    return out


def test_train_writes_a_loadable_gzipped_model(trained: Path) -> None:
    assert trained.read_bytes()[:2] == b"\x1f\x8b"
    model = load_model(trained)
    assert model.meta["examples"] == 239
    assert 0.0 <= model.score(MMLU_PROMPT) <= 1.0


def test_score_reads_json_lines_and_reports_bad_ones(trained: Path) -> None:
    lines = [
        json.dumps({"prompt": MMLU_PROMPT}),
        json.dumps({"messages": [{"role": "user", "content": "Prove Fermat's last theorem."}]}),
        "",
        "{not json",
        json.dumps({"messages": []}),
        json.dumps(["a list"]),
        json.dumps({"prompt": "short"}),
    ]
    code, stdout, stderr = invoke("score", "--model", str(trained), stdin="\n".join(lines) + "\n")
    assert code == 1
    scores = [json.loads(line)["score"] for line in stdout.splitlines()]
    assert len(scores) == 3
    assert all(0.0 <= s <= 1.0 for s in scores)
    errors = [json.loads(line) for line in stderr.splitlines()]
    assert [e["line"] for e in errors] == [4, 5, 6]
    assert "Traceback" not in stderr


def test_score_of_good_input_exits_0(trained: Path) -> None:
    code, stdout, _ = invoke(
        "score", "--model", str(trained), stdin=json.dumps({"prompt": MMLU_PROMPT}) + "\n"
    )
    assert code == 0
    assert json.loads(stdout)["score"] == pytest.approx(
        load_model(trained).score(MMLU_PROMPT), abs=1e-6
    )


def test_eval_prints_metrics_and_writes_the_plot(
    trained: Path, data_dir: Path, tmp_path: Path
) -> None:
    plot = tmp_path / "pgr.png"
    code, stdout, stderr = invoke(
        "eval", "--model", str(trained), "--data", str(data_dir), "--plot", str(plot)
    )
    assert code == 0, stderr
    assert "APGR" in stdout
    assert "CPT(50%)" in stdout and "CPT(80%)" in stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_stores_its_cross_validated_curve(trained: Path) -> None:
    """Four groups: four leave-one-group-out folds (fewer than --curve-folds' 5)."""
    model = load_model(trained)
    assert len(model.curve) == 11 and model.curve[0][0] == 0 and model.curve[-1][0] == 1


def test_eval_prints_the_cost_curve(trained: Path, data_dir: Path) -> None:
    code, stdout, stderr = invoke(
        "eval", "--model", str(trained), "--data", str(data_dir),
        "--weak-cost", "1", "--strong-cost", "10",
    )  # fmt: skip
    assert code == 0, stderr
    lines = [line.split() for line in stdout.splitlines() if line.strip().endswith("%")]
    points = [line for line in lines if len(line) == 6]
    assert len(points) == 11
    first, last = points[0], points[-1]
    assert (first[0], first[3], first[5]) == ("0.0%", "1", "10.0%")  # all weak: 1 per request
    assert (last[0], last[3], last[5]) == ("100.0%", "10", "100.0%")
    code, _stdout, stderr = invoke(
        "eval", "--model", str(trained), "--data", str(data_dir), "--weak-cost", "1"
    )
    assert code == 2 and "--strong-cost" in stderr


def test_cv_holds_out_whole_subjects(data_dir: Path) -> None:
    code, stdout, stderr = invoke("cv", "--data", str(data_dir), "--folds", "2", "--json")
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert len(summary["folds"]) == 2
    held = [set(f["groups"]) for f in summary["folds"]]
    assert held[0].isdisjoint(held[1])
    assert held[0] | held[1] == set(SUBJECTS)
    assert isinstance(summary["mean_apgr"], float)
    assert set(summary["pooled"]) == {"apgr", "cpt50", "cpt80"}
    code, stdout, _ = invoke("cv", "--data", str(data_dir), "--folds", "2")
    assert code == 0
    assert "fold 2: APGR" in stdout and "pooled out-of-fold: APGR" in stdout


def test_bad_inputs_are_errors_not_tracebacks(data_dir: Path, tmp_path: Path) -> None:
    code, _, stderr = invoke("eval", "--model", str(tmp_path / "none.json"), "--data", "x")
    assert code == 2 and "cannot read" in stderr
    code, _, stderr = invoke("train", "--data", str(tmp_path / "missing.csv"), "--out", "m.json")
    assert code == 2 and "no such file" in stderr
    code, _, stderr = invoke(
        "train", "--data", str(data_dir), "--out", "m.json", "--weak-column", "nope"
    )
    assert code == 2 and "missing column 'nope'" in stderr
    code, _, stderr = invoke("cv", "--data", str(data_dir), "--folds", "9")
    assert code == 2 and "cannot make 9 folds" in stderr


@pytest.mark.serial  # CPU timing: not beside another test worker
def test_shipped_default_model_scores_under_a_millisecond() -> None:
    model = load_model(DEFAULT_MODEL)
    assert model.meta["examples"] > 7000
    prompt = ("The passage below describes an economic policy debate. " * 40)[:2000] + (
        "\nWhich of the following best describes the author's view?\n"
        "A. Tariffs raise welfare\nB. Tariffs lower welfare\nC. It depends\nD. None\nAnswer:"
    )
    model.score(prompt)  # warm up
    timings = []
    for _ in range(300):
        started = time.perf_counter()
        model.score(prompt)
        timings.append(time.perf_counter() - started)
    assert statistics.median(timings) < 0.001
    payload = {"messages": [{"role": "user", "content": prompt}]}
    assert model.score_payload(payload) == model.score(prompt)
