"""Render the Helm chart offline (Helm's own Go SDK, no cluster) and look inside the result."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "tally"
RELEASE = "tally"
NAMESPACE = "tally-test"
CASES = ("default", "minimal", "production")


def case_values(case: str) -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "ci" / f"{case}-values.yaml").read_text())
    return values


@dataclass(frozen=True)
class Manifest:
    template: str
    doc: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.doc["kind"])

    @property
    def name(self) -> str:
        return str(self.doc["metadata"]["name"])

    @property
    def annotations(self) -> dict[str, str]:
        return dict(self.doc["metadata"].get("annotations") or {})


def render(values: dict[str, Any], *, upgrade: bool = False) -> list[Manifest]:
    """Every object the chart would create, hooks included (as `helm template` prints them)."""
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(
            values,
            name=RELEASE,
            namespace=NAMESPACE,
            is_install=not upgrade,
            is_upgrade=upgrade,
        )
    manifests = []
    for template, text in sorted(rendered.items()):
        if not template.endswith((".yaml", ".yml")):
            continue  # NOTES.txt
        manifests.extend(Manifest(template, doc) for doc in yaml.safe_load_all(text) if doc)
    return manifests


def of_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m.kind == kind]


def one(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    found = [m for m in manifests if m.kind == kind and m.name == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_specs(manifests: list[Manifest]) -> Iterator[tuple[Manifest, dict[str, Any]]]:
    """(workload, pod spec) for every Deployment and Job."""
    for manifest in manifests:
        if manifest.kind in ("Deployment", "Job"):
            yield manifest, manifest.doc["spec"]["template"]["spec"]


def pod_labels(manifest: Manifest) -> dict[str, str]:
    return dict(manifest.doc["spec"]["template"]["metadata"]["labels"])


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels plus In/NotIn/Exists/DoesNotExist)."""
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        selector = {"matchLabels": selector}  # a Service's plain key/value selector
    match_labels = selector.get("matchLabels", {})
    if any(labels.get(key) != value for key, value in match_labels.items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def component_name(component: str) -> str:
    return f"{RELEASE}-{component}"
