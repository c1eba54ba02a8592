"""The series Tally exports, and a check that a PromQL expression selects only those.

Shared by the checks of the alert rules (deploy/prometheus-rules.yaml) and of the Grafana
dashboard (deploy/grafana/tally-dashboard.json). The names come from the Prometheus registry
after importing every module of Tally (so a metric any module defines counts), the labels from
what the three services really print on `/metrics` after answering a few requests (billing's
also reads its platform-wide figures from Postgres), and from the declarations of labelled
metrics that no request has used yet.
"""

from __future__ import annotations

import importlib
import pkgutil

import prometheus_client
import promql_parser
import pytest
from litestar.testing import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tally.config import get_settings

SERVICES = ("gateway", "billing", "tenant")
# Series Prometheus itself records for every target; no program exports them.
PROMETHEUS_SERIES = frozenset({"up"})
# Labels Prometheus attaches to every scraped series: `job` and `instance` always, the rest from
# Kubernetes service discovery (the Prometheus Operator's ServiceMonitor).
TARGET_LABELS = frozenset(
    {"job", "instance", "namespace", "pod", "container", "endpoint", "service"}
)
# Counted in the worker (`tally worker`: auto top-up charges, Stripe event processing, live-balance
# reconcile and reaping), which has no listener: no Prometheus ever sees them. Billing exports
# what operators watch instead from Postgres (tally_auto_topup_orders, ...).
NOT_SCRAPED = frozenset(
    {
        "tally_auto_topups_total",
        "tally_stripe_events_processed_total",
        "tally_live_balance_drift_total",
        "tally_live_balance_holds_reaped_total",
    }
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


def collect_exported(database_url: str, redis_url: str) -> Exported:
    """Start each service on the test Postgres and Redis and gather what it exports."""
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


def selection_problems(expr: promql_parser.Expr, exported: Exported) -> list[str]:
    """Why `expr` would select nothing from what Tally exports (empty: nothing wrong)."""
    problems = []
    for selector in _selectors(expr):
        name = selector.name
        if not name:
            problems.append(f"a selector without a metric name: {selector}")
            continue
        if name in NOT_SCRAPED:
            problems.append(f"{name} is counted in the worker, which nothing scrapes")
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
