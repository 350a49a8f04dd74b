"""`farebox router …`: train, score with, evaluate and cross-validate the quality router."""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from gateway.cli.common import fail
from gateway.router.dataset import DEFAULT_STRONG, DEFAULT_WEAK, DataError, Example, load
from gateway.router.model_io import DEFAULT_MODEL, ModelFileError, load_model, save_model
from gateway.router.train import (
    CrossValidation,
    Fold,
    TrainOptions,
    cross_validate,
    score_all,
    train,
)
from routing.quality_model import QualityModel, text_of
from routing.router_metrics import RouterReport

DEFAULTS = TrainOptions()
router_app = typer.Typer(
    no_args_is_help=True, help="Train and evaluate the quality router (strategy: quality)."
)

DataOption = Annotated[
    list[Path],
    typer.Option(
        "--data",
        "-d",
        metavar="FILE_OR_DIR",
        help="CSV/JSONL file with prompts and per-model correctness (repeatable); a directory "
        "means its *.csv and *.jsonl files. A contaminated_prompts.jsonl beside them is applied.",
    ),
]
WeakOption = Annotated[
    str, typer.Option("--weak-column", help="Column: did the weak model answer correctly.")
]
StrongOption = Annotated[
    str, typer.Option("--strong-column", help="Column: did the strong model answer correctly.")
]
PromptOption = Annotated[
    str, typer.Option("--prompt-column", help="Column with the prompt text (JSONL: or messages).")
]
ModelOption = Annotated[
    Path, typer.Option("--model", "-m", metavar="MODEL", help="Model file (.json or .json.gz).")
]


def _load_data(data: list[Path], weak: str, strong: str, prompt: str) -> list[Example]:
    try:
        examples, dropped = load(data, weak, strong, prompt)
    except DataError as exc:
        raise fail(str(exc), 2) from None
    groups = len({e.group for e in examples})
    note = f", {dropped} contaminated rows dropped" if dropped else ""
    typer.echo(f"{len(examples)} prompts in {groups} groups{note}", err=True)
    return examples


def _load_model(path: Path) -> QualityModel:
    try:
        return load_model(path)
    except ModelFileError as exc:
        raise fail(str(exc), 2) from None


def _pct(value: float | None) -> str:
    return "never" if value is None else f"{value * 100:.1f}%"


@router_app.command("train")
def train_command(
    data: DataOption,
    out: Annotated[Path, typer.Option("--out", "-o", metavar="MODEL", help="Model file to write.")],
    weak_column: WeakOption = DEFAULT_WEAK,
    strong_column: StrongOption = DEFAULT_STRONG,
    prompt_column: PromptOption = "prompt",
    l2: Annotated[float, typer.Option(help="Ridge penalty.")] = DEFAULTS.l2,
    label: Annotated[
        str, typer.Option(help="Target: diff (strong−weak), gain, weak-wrong.")
    ] = DEFAULTS.label,
    curve_folds: Annotated[
        int,
        typer.Option(
            help="Leave-groups-out folds for the stored quality curve a route's "
            "target_quality reads (0: no curve).",
            min=0,
        ),
    ] = 5,
) -> None:
    """Train a model on all of --data and write it to --out (gzipped if it ends in .gz)."""
    examples = _load_data(data, weak_column, strong_column, prompt_column)
    started = time.perf_counter()
    options = TrainOptions(l2=l2, label=label)
    try:
        model = train(
            examples,
            options,
            meta={"weak": weak_column, "strong": strong_column, "data": [p.name for p in data]},
        )
        folds = min(curve_folds, len({e.group for e in examples}))
        if folds >= 2:
            # The curve of prompts each fold's model never saw the groups of: what a route
            # asking for a quality can expect on new traffic, not on the training prompts.
            pooled = cross_validate(examples, folds, 0, options).pooled
            model = dataclasses.replace(
                model, curve=tuple((p.strong_share, p.pgr) for p in pooled.curve)
            )
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    size = save_model(model, out)
    typer.echo(
        f"wrote {out} ({size / 1024:.0f} KiB, {len(model.lexical)} lexical and "
        f"{len(model.structural)} structural weights) in {time.perf_counter() - started:.0f}s"
    )


@router_app.command("score")
def score_command(model: ModelOption = DEFAULT_MODEL) -> None:
    """Score JSON lines from stdin ({"prompt": …} or {"messages": […]}): one {"score": x} each.

    A line that is not a request body gets a JSON error on stderr (with its line number) and
    the command exits 1 after the last line.
    """
    loaded = _load_model(model)
    failed = False
    for number, line in enumerate(sys.stdin, 1):
        if not line.strip():
            continue
        error = None
        try:
            payload = json.loads(line)
        except json.JSONDecodeError as exc:
            error = f"not JSON: {exc.msg}"
        else:
            if not isinstance(payload, dict):
                error = "expected a JSON object"
            elif not text_of(payload):
                error = "no prompt text (expected 'prompt' or 'messages' with a user turn)"
        if error is not None:
            failed = True
            sys.stderr.write(json.dumps({"line": number, "error": error}) + "\n")
            continue
        sys.stdout.write(json.dumps({"score": round(loaded.score(text_of(payload)), 6)}) + "\n")
    sys.stdout.flush()
    if failed:
        raise typer.Exit(1)


def _print_report(report: RouterReport, costs: tuple[float, float] | None = None) -> None:
    """The metrics and the curve; with (weak, strong) costs per request, each point's cost
    per request and per correct answer, beside sending everything to the strong model."""
    typer.echo(
        f"prompts {report.prompts}: weak quality {report.weak_quality:.3f}, "
        f"strong quality {report.strong_quality:.3f}"
    )
    typer.echo(f"APGR      {report.apgr:.3f}")
    typer.echo(f"CPT(50%)  {_pct(report.cpt50)}")
    typer.echo(f"CPT(80%)  {_pct(report.cpt80)}")
    if costs is None:
        typer.echo("strong calls  quality  PGR")
        for point in report.curve:
            typer.echo(
                f"  {point.strong_share * 100:6.1f}%    {point.quality:.3f}  {point.pgr:6.3f}"
            )
        return
    weak, strong = costs
    typer.echo("strong calls  quality  PGR     cost/request  cost/correct  vs all-strong")
    for point in report.curve:
        # strategy quality sends each request to one of the two (a gate's escalations of
        # the weak model's failures come on top, and this data cannot say how many).
        cost = (1 - point.strong_share) * weak + point.strong_share * strong
        per_correct = cost / point.quality if point.quality else float("inf")
        typer.echo(
            f"  {point.strong_share * 100:6.1f}%    {point.quality:.3f}  {point.pgr:6.3f}  "
            f"{cost:12.6g}  {per_correct:12.6g}  {cost / strong:9.1%}"
        )


@router_app.command("eval")
def eval_command(
    data: DataOption,
    model: ModelOption = DEFAULT_MODEL,
    weak_column: WeakOption = DEFAULT_WEAK,
    strong_column: StrongOption = DEFAULT_STRONG,
    prompt_column: PromptOption = "prompt",
    plot: Annotated[
        Path | None, typer.Option(metavar="PNG", help="Write the PGR curve as a PNG.")
    ] = None,
    weak_cost: Annotated[
        float | None,
        typer.Option(help="Cost of one weak-model request (any unit): prints the cost curve."),
    ] = None,
    strong_cost: Annotated[
        float | None, typer.Option(help="Cost of one strong-model request (same unit).")
    ] = None,
) -> None:
    """APGR, CPT(50%) and CPT(80%) of MODEL on --data (RouteLLM's definitions); with
    --weak-cost and --strong-cost, the cost per request and per correct answer at each
    point of the curve."""
    if (weak_cost is None) != (strong_cost is None):
        raise fail("give both --weak-cost and --strong-cost", 2)
    if weak_cost is not None and strong_cost is not None and (weak_cost < 0 or strong_cost <= 0):
        raise fail("costs must be positive", 2)
    loaded = _load_model(model)
    examples = _load_data(data, weak_column, strong_column, prompt_column)
    report = score_all(loaded, examples)
    costs = None if weak_cost is None or strong_cost is None else (weak_cost, strong_cost)
    _print_report(report, costs)
    if plot is not None:
        _write_plot(plot, [("router", report)], f"APGR {report.apgr:.3f} on {report.prompts}")


def _write_plot(path: Path, reports: list[tuple[str, RouterReport]], title: str) -> None:
    from gateway.router.plot import PALETTE, Series, pgr_chart

    series = [
        Series(
            f"{name} APGR {r.apgr:.2f}",
            [(p.strong_share, p.pgr) for p in r.curve],
            PALETTE[n % len(PALETTE)],
        )
        for n, (name, r) in enumerate(reports)
    ]
    try:
        path.write_bytes(pgr_chart(series, title))
    except OSError as exc:
        raise fail(f"cannot write {path}: {exc.strerror or exc}") from None
    typer.echo(f"wrote {path}")


@router_app.command("cv")
def cv_command(
    data: DataOption,
    folds: Annotated[int, typer.Option(help="Folds: whole groups (subjects) held out.")] = 5,
    seed: Annotated[int, typer.Option(help="Shuffles which groups share a fold.")] = 0,
    weak_column: WeakOption = DEFAULT_WEAK,
    strong_column: StrongOption = DEFAULT_STRONG,
    prompt_column: PromptOption = "prompt",
    l2: Annotated[float, typer.Option(help="Ridge penalty.")] = DEFAULTS.l2,
    label: Annotated[str, typer.Option(help="Target: diff, gain, weak-wrong.")] = "diff",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Leave-subjects-out cross-validation: per-fold APGR, CPT(50%), CPT(80%) and the mean."""
    examples = _load_data(data, weak_column, strong_column, prompt_column)

    def show(fold: Fold) -> None:
        if not as_json:
            r = fold.report
            typer.echo(
                f"fold {len(shown) + 1}: APGR {r.apgr:.3f}  CPT50 {_pct(r.cpt50)}  "
                f"CPT80 {_pct(r.cpt80)}  ({r.prompts} prompts: {', '.join(fold.groups)})"
            )
        shown.append(fold)

    shown: list[Fold] = []
    try:
        result = cross_validate(examples, folds, seed, TrainOptions(l2=l2, label=label), show)
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    summary = _summary(result)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    typer.echo(
        f"mean APGR {summary['mean_apgr']:.3f} (sd {summary['sd_apgr']:.3f})  "
        f"mean CPT50 {_pct(summary['mean_cpt50'])}  mean CPT80 {_pct(summary['mean_cpt80'])}"
    )
    pooled = result.pooled
    typer.echo(
        f"pooled out-of-fold: APGR {pooled.apgr:.3f}  CPT50 {_pct(pooled.cpt50)}  "
        f"CPT80 {_pct(pooled.cpt80)}  ({pooled.prompts} prompts)"
    )


def _summary(result: CrossValidation) -> dict[str, Any]:
    results = result.folds
    apgrs = [f.report.apgr for f in results]
    cpt50 = [f.report.cpt50 for f in results if f.report.cpt50 is not None]
    cpt80 = [f.report.cpt80 for f in results if f.report.cpt80 is not None]
    return {
        "folds": [
            {
                "groups": list(f.groups),
                "prompts": f.report.prompts,
                "apgr": f.report.apgr,
                "cpt50": f.report.cpt50,
                "cpt80": f.report.cpt80,
            }
            for f in results
        ],
        "mean_apgr": statistics.mean(apgrs),
        "sd_apgr": statistics.pstdev(apgrs),
        "mean_cpt50": statistics.mean(cpt50) if cpt50 else None,
        "mean_cpt80": statistics.mean(cpt80) if cpt80 else None,
        "pooled": {
            "apgr": result.pooled.apgr,
            "cpt50": result.pooled.cpt50,
            "cpt80": result.pooled.cpt80,
        },
    }
