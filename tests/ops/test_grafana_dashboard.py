"""deploy/grafana/tally-dashboard.json: an importable Grafana dashboard on series Tally exports.

The structure is checked as Grafana's importer needs it (a Prometheus datasource variable, panels
with ids and positions that fit the 24-column grid without overlapping), and every panel's PromQL
is parsed and must select only series and labels the services really export: the same check as
the alert rules' (tests/ops/exported_metrics.py).
"""

from __future__ import annotations

import json
import re
from typing import Any

import promql_parser
import pytest

from tests.ops.compose_file import ROOT
from tests.ops.exported_metrics import Exported, selection_problems

DASHBOARD = ROOT / "deploy" / "grafana" / "tally-dashboard.json"
PANEL_TYPES = {"timeseries", "stat", "gauge", "bargauge", "table", "heatmap", "text"}
# What Grafana puts in place of its variables before sending a query, near enough for parsing.
_INTERVALS = re.compile(
    r"\$__(rate_interval|interval|range)\b|\$\{__(rate_interval|interval|range)\}"
)
_VARIABLE = re.compile(r"\$\{\w+(?::\w+)?\}|\$\w+")


def _load() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def _panels(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows' nested (collapsed) panels included, rows themselves excluded."""
    found = []
    for panel in document["panels"]:
        if panel["type"] == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def _queries() -> list[tuple[str, str]]:
    return [
        (f"{panel['title']} {target['refId']}", target["expr"])
        for panel in _panels(_load())
        for target in panel["targets"]
    ]


def as_prometheus_sees_it(expr: str) -> str:
    """A panel's query with Grafana's variables filled in as Grafana would."""
    return _VARIABLE.sub(".*", _INTERVALS.sub("5m", expr))


def problems_of(expr_text: str, exported: Exported) -> list[str]:
    """Why a panel's query would show nothing on what Tally exports (empty: nothing wrong)."""
    try:
        expr = promql_parser.parse(as_prometheus_sees_it(expr_text))
    except ValueError as exc:
        return [f"does not parse: {exc}"]
    return selection_problems(expr, exported)


def test_the_dashboard_is_importable_with_a_prometheus_datasource_variable() -> None:
    document = _load()
    assert document["id"] is None  # an import assigns its own
    assert document["uid"] and document["title"]
    assert isinstance(document["schemaVersion"], int)
    variables = {v["name"]: v for v in document["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == "${datasource}", variable["name"]


def test_panels_have_unique_ids_and_fit_the_grid_without_overlapping() -> None:
    document = _load()
    everything = [*document["panels"], *_panels(document)]
    ids = [panel["id"] for panel in {id(p): p for p in everything}.values()]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in document["panels"] + [p for p in _panels(document) if p not in document["panels"]]:
        box = panel["gridPos"]
        assert 0 <= box["x"] and box["w"] >= 1 and box["x"] + box["w"] <= 24, panel["title"]
        assert box["y"] >= 0 and box["h"] >= 1, panel["title"]
        for x in range(box["x"], box["x"] + box["w"]):
            for y in range(box["y"], box["y"] + box["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[x, y]}"
                cells[x, y] = panel["title"]


def test_every_panel_queries_the_datasource_variable() -> None:
    for panel in _panels(_load()):
        assert panel["type"] in PANEL_TYPES, panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert target["expr"].strip(), panel["title"]


@pytest.mark.parametrize(("query", "expr"), _queries(), ids=[q for q, _ in _queries()])
def test_every_query_selects_series_tally_exports(
    query: str, expr: str, exported: Exported
) -> None:
    assert problems_of(expr, exported) == []


def test_the_check_does_catch_a_query_on_a_missing_metric_or_label(exported: Exported) -> None:
    assert problems_of("rate(tally_fold_lag_secs[$__rate_interval])", exported) == [
        "tally_fold_lag_secs is not exported by Tally"
    ]
    assert problems_of('max by (shard) (tally_fold_lag_seconds{tenant="$t"})', exported) == [
        "tally_fold_lag_seconds has no label tenant"
    ]
    # Counted in the worker, which nothing scrapes: a panel on it would stay empty.
    assert problems_of("sum(rate(tally_auto_topups_total[$__rate_interval]))", exported) == [
        "tally_auto_topups_total is counted in the worker, which nothing scrapes"
    ]
    assert problems_of("sum(rate(tally_http_requests_total[5m]", exported)[0].startswith(
        "does not parse"
    )


def test_the_dashboard_shows_what_the_operations_issue_asks_for() -> None:
    queries = " ".join(expr for _, expr in _queries())
    for metric in (
        "tally_http_requests_total",
        "tally_http_request_duration_seconds_bucket",
        "tally_gateway_upstream_duration_seconds_bucket",
        "tally_gateway_upstream_errors_total",
        "tally_gateway_upstream_failovers_total",
        "tally_gateway_tokens_total",
        "tally_gateway_credits_nano_total",
        "tally_gateway_open_holds",
        "tally_gateway_event_append_batch_size_bucket",
        "tally_gateway_event_append_commit_seconds_bucket",
        "tally_fold_lag_seconds",
        "tally_fold_lag_events",
        "tally_stripe_webhooks_total",
        "tally_stripe_webhook_events",
        "tally_auto_topup_orders",
        "tally_alert_webhooks",
    ):
        assert re.search(rf"\b{metric}\b", queries), f"no panel shows {metric}"
