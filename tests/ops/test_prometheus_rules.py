"""deploy/prometheus-rules.yaml: a valid Prometheus rule file whose alerts watch real series.

Every expression is parsed with PromQL's own grammar, and every series it selects must be one
the code exports (tests/ops/exported_metrics.py says how that is gathered). A renamed metric or
label fails here instead of leaving an alert that can never fire.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

import promql_parser
import pytest
import yaml

from tests.ops.compose_file import ROOT
from tests.ops.exported_metrics import Exported, selection_problems

RULES = ROOT / "deploy" / "prometheus-rules.yaml"
RULES_TEST = ROOT / "tests" / "ops" / "prometheus_rules_test.yaml"
OPERATIONS = ROOT / "docs" / "operations.md"
_COMPARISONS = {"==", "!=", ">", "<", ">=", "<=", "and", "or", "unless"}


def _load_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    assert set(document) == {"groups"}
    return [rule for group in document["groups"] for rule in group["rules"]]


RULE_LIST = _load_rules()


def problems_of(expr_text: str, exported: Exported) -> list[str]:
    """Why an alert expression could never fire on what Tally exports (empty: none)."""
    try:
        expr = promql_parser.parse(expr_text)
    except ValueError as exc:
        return [f"does not parse: {exc}"]
    problems = []
    if not (isinstance(expr, promql_parser.BinaryExpr) and str(expr.op) in _COMPARISONS):
        problems.append("an alert expression must end in a comparison or a set operation")
    return problems + selection_problems(expr, exported)


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


# --- the file ------------------------------------------------------------------------------------


def test_the_file_is_a_prometheus_rule_file() -> None:
    document = yaml.safe_load(RULES.read_text())
    names = [group["name"] for group in document["groups"]]
    assert len(names) == len(set(names)), "group names must be unique"
    for group in document["groups"]:
        assert set(group) <= {"name", "interval", "limit", "rules"}, group["name"]
        assert group["rules"], group["name"]
    alerts = [rule["alert"] for rule in RULE_LIST]
    assert len(RULE_LIST) >= 6
    # Two rules may share an alert name (one per severity), but not the same severity.
    keys = [(rule["alert"], rule["labels"]["severity"]) for rule in RULE_LIST]
    assert len(keys) == len(set(keys))
    for rule, alert in zip(RULE_LIST, alerts, strict=True):
        assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
        assert re.fullmatch(r"Tally[A-Z][A-Za-z]+", alert), alert
        if "for" in rule:
            promql_parser.parse_duration(rule["for"])  # raises on a bad duration
        assert rule["labels"]["severity"] in ("warning", "critical"), alert
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), alert


@pytest.mark.parametrize("rule", RULE_LIST, ids=lambda rule: str(rule["alert"]))
def test_every_alert_watches_series_tally_exports(rule: dict[str, Any], exported: Exported) -> None:
    assert problems_of(rule["expr"], exported) == []


def test_the_check_does_catch_a_rule_on_a_missing_metric_or_label(exported: Exported) -> None:
    # The test above passing means something only if the same check fails bad rules.
    assert problems_of("rate(tally_http_requests_totl[5m]) > 0", exported) == [
        "tally_http_requests_totl is not exported by Tally"
    ]
    assert problems_of('rate(tally_http_requests_total{path="/x"}[5m]) > 0', exported) == [
        "tally_http_requests_total has no label path"
    ]
    assert problems_of("sum by (tenant) (rate(tally_http_requests_total[5m])) > 0", exported) == [
        "groups or matches by tenant, which no series has"
    ]
    assert problems_of('tally_http_requests_total{route="/nope"} > 0', exported) == [
        "no service has the route /nope"
    ]
    # Labels of a metric no request has used yet come from its declaration.
    unused = 'sum by (provider) (rate(tally_gateway_upstream_errors_total{kind="x"}[5m])) > 0'
    assert problems_of(unused, exported) == [
        "tally_gateway_upstream_errors_total has no label kind"
    ]
    assert problems_of("rate(tally_http_requests_total[5m]", exported)[0].startswith(
        "does not parse"
    )
    assert problems_of("rate(tally_http_requests_total[5m])", exported) == [
        "an alert expression must end in a comparison or a set operation"
    ]


def test_every_alert_has_its_section_in_the_operations_guide() -> None:
    anchors = {
        _slug(line.lstrip("#"))
        for line in OPERATIONS.read_text().splitlines()
        if line.startswith("#")
    }
    for rule in RULE_LIST:
        path, _, anchor = rule["annotations"]["runbook"].partition("#")
        assert path == "docs/operations.md", rule["alert"]
        assert anchor in anchors, f"{rule['alert']}: no heading #{anchor} in docs/operations.md"


# --- evaluated by Prometheus itself --------------------------------------------------------------

PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")
def test_alerts_fire_on_the_situations_they_describe_and_only_then() -> None:
    # tests/ops/prometheus_rules_test.yaml feeds synthetic series to Prometheus' own rule
    # engine and states which alerts (labels and rendered annotations) each one must raise.
    assert PROMTOOL is not None
    for command in (
        [PROMTOOL, "check", "rules", str(RULES)],
        [PROMTOOL, "test", "rules", str(RULES_TEST)],
    ):
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
