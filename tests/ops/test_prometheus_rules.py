"""deploy/prometheus-rules.yaml: a valid Prometheus rule file whose alerts watch real series.

Every expression is parsed with PromQL's own grammar, and every series it selects must be one
the code exports: the names come from the Prometheus registry after importing every module of
Tally (so a metric any module defines counts), the labels from what the three services really
print on `/metrics` after answering a few requests. A renamed metric or label fails here instead
of leaving an alert that can never fire.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import shutil
import subprocess
from typing import Any

import prometheus_client
import promql_parser
import pytest
import yaml
from litestar.testing import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tally.config import get_settings
from tests.ops.compose_file import ROOT

RULES = ROOT / "deploy" / "prometheus-rules.yaml"
RULES_TEST = ROOT / "tests" / "ops" / "prometheus_rules_test.yaml"
OPERATIONS = ROOT / "docs" / "operations.md"
SERVICES = ("gateway", "billing", "tenant")
# Series Prometheus itself records for every target; no program exports them.
PROMETHEUS_SERIES = frozenset({"up"})
# Labels Prometheus attaches to every scraped series: `job` and `instance` always, the rest from
# Kubernetes service discovery (the Prometheus Operator's ServiceMonitor).
TARGET_LABELS = frozenset(
    {"job", "instance", "namespace", "pod", "container", "endpoint", "service"}
)
# What each metric type is exported as (OpenMetrics / prometheus_client naming).
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "enum": ("",),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "unknown": ("",),
}
_COMPARISONS = {"==", "!=", ">", "<", ">=", "<=", "and", "or", "unless"}


class Exported:
    """The series the code can export: name -> label names (empty when never observed)."""

    def __init__(self) -> None:
        self.labels: dict[str, set[str]] = {}
        self.routes: set[str] = {"unmatched"}

    def add_name(self, name: str) -> None:
        self.labels.setdefault(name, set())

    def add_sample(self, name: str, labels: dict[str, str]) -> None:
        self.labels.setdefault(name, set()).update(labels)

    @property
    def all_labels(self) -> set[str]:
        return set().union(*self.labels.values()) | TARGET_LABELS


def _import_every_module() -> None:
    for package in ("tally", *SERVICES):
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, f"{package}."):
            importlib.import_module(info.name)


@pytest.fixture(scope="module")
def exported(database_url: str, redis_url: str) -> Exported:
    found = Exported()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TALLY_ENV", "test")
        patch.setenv("TALLY_DATABASE_URL", database_url)
        patch.setenv("TALLY_REDIS_URL", redis_url)
        get_settings.cache_clear()
        try:
            for service in SERVICES:
                app = importlib.import_module(f"{service}.app").create_app()
                found.routes |= {route.path for route in app.routes}
                with TestClient(app) as client:
                    for path in ("/healthz", "/readyz", "/no-such-route", "/metrics"):
                        client.get(path)
                    exposition = client.get("/metrics").text
                for family in text_string_to_metric_families(exposition):
                    for sample in family.samples:
                        found.add_sample(sample.name, sample.labels)
        finally:
            get_settings.cache_clear()
    _import_every_module()
    for family in prometheus_client.REGISTRY.collect():
        for suffix in _SUFFIXES[family.type]:
            found.add_name(family.name + suffix)
    # A labelled metric prints nothing until it is first used (the gateway's upstream series
    # need a provider call), so its labels also come from its declaration. prometheus_client
    # has no public accessor for either mapping.
    registry = prometheus_client.REGISTRY
    for collector, names in registry._collector_to_names.items():
        declared = tuple(getattr(collector, "_labelnames", ()))
        if not declared:
            continue
        for name in names:
            extra = ("le",) if name.endswith("_bucket") else ()
            found.add_sample(name, dict.fromkeys((*declared, *extra), ""))
    return found


def _load_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    assert set(document) == {"groups"}
    return [rule for group in document["groups"] for rule in group["rules"]]


RULE_LIST = _load_rules()


def _selectors(expr: promql_parser.Expr) -> list[promql_parser.VectorSelector]:
    found: list[promql_parser.VectorSelector] = []

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)

    promql_parser.walk(expr, visit)
    return found


def _grouping_labels(expr: promql_parser.Expr) -> set[str]:
    """Labels named in `by (...)`, `without (...)`, `on (...)`, `ignoring (...)`, group_*."""
    labels: set[str] = set()

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            labels.update(node.modifier.labels)
        if isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None:
            if node.modifier.matching is not None:
                labels.update(node.modifier.matching.labels)
            labels.update(node.modifier.group_labels or ())

    promql_parser.walk(expr, visit)
    return labels


def problems_of(expr_text: str, exported: Exported) -> list[str]:
    """Why an alert expression could never fire on what Tally exports (empty: none)."""
    try:
        expr = promql_parser.parse(expr_text)
    except ValueError as exc:
        return [f"does not parse: {exc}"]
    problems = []
    if not (isinstance(expr, promql_parser.BinaryExpr) and str(expr.op) in _COMPARISONS):
        problems.append("an alert expression must end in a comparison or a set operation")
    for selector in _selectors(expr):
        name = selector.name
        if not name:
            problems.append(f"a selector without a metric name: {selector}")
            continue
        if name in PROMETHEUS_SERIES:
            known = set(TARGET_LABELS)
        elif name in exported.labels:
            # Labels are known only for series the services printed; a series never observed
            # is checked by name alone.
            known = exported.labels[name] | TARGET_LABELS if exported.labels[name] else set()
        else:
            problems.append(f"{name} is not exported by Tally")
            continue
        for matcher in selector.matchers.matchers:
            if known and matcher.name not in known:
                problems.append(f"{name} has no label {matcher.name}")
            if matcher.name == "route" and matcher.op == promql_parser.MatchOp.Equal:
                if matcher.value not in exported.routes:
                    problems.append(f"no service has the route {matcher.value}")
    for label in sorted(_grouping_labels(expr) - exported.all_labels):
        problems.append(f"groups or matches by {label}, which no series has")
    return problems


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
