"""The Grafana dashboard queries only metrics (and labels) Farebox really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase

from gateway.cache import response as cache
from gateway.drills import board as drills
from gateway.limits import limiter as limits
from gateway.observability import metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "helm" / "farebox" / "dashboards" / "farebox.json"
DOC = ROOT / "docs" / "grafana.md"

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
}
_NAME = re.compile(r"\b((?:farebox|gen_ai)_[a-z0-9_]+)\b(\{[^}]*\})?")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")


def _exported() -> dict[str, set[str]]:
    """Every sample name Farebox can export → the label names it carries."""
    out: dict[str, set[str]] = {}
    for module in (metrics, limits, drills, cache):
        for value in vars(module).values():
            if not isinstance(value, MetricWrapperBase):
                continue
            name = str(value._name)
            labels = set(value._labelnames)
            kind = str(value._type)
            for suffix in _SUFFIXES[kind]:
                out[name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return out


def _queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", ()):
            found.append((panel["title"], target["expr"]))
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            found.append((f"${variable['name']}", query["query"]))
    return found


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def test_every_query_names_exported_metrics_and_labels(dashboard: dict[str, Any]) -> None:
    exported = _exported()
    assert "farebox_requests_total" in exported and "gen_ai_client_token_usage_bucket" in exported
    queries = _queries(dashboard)
    assert len(queries) > 30
    for title, expr in queries:
        assert expr.count("(") == expr.count(")"), (title, expr)
        # Metric names, once `by (…)` clauses (label names, some gen_ai_*) are out of the way.
        names = _NAME.findall(_GROUPING.sub("", expr))
        assert names, f"{title!r} queries no Farebox metric: {expr}"
        labels_here: set[str] = set()
        for name, matchers in names:
            assert name in exported, f"{title!r}: {name} is not exported by Farebox"
            labels_here |= exported[name]
            for label in _MATCHER.findall(matchers):
                assert label in exported[name], f"{title!r}: {name} has no label {label!r}"
        for group in _GROUPING.findall(expr):
            for label in filter(None, (part.strip() for part in group.split(","))):
                assert label in labels_here, f"{title!r}: no metric here has label {label!r}"


def test_panels_are_laid_out_and_use_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] and dashboard["title"] == "Farebox"
    seen = set()
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        cell = (pos["x"], pos["y"])
        assert cell not in seen, f"two panels at {cell}"
        seen.add(cell)
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_the_doc_lists_every_panel(dashboard: dict[str, Any]) -> None:
    text = DOC.read_text()
    for panel in dashboard["panels"]:
        assert panel["title"] in text, f"docs/grafana.md does not mention {panel['title']!r}"
