"""The Helm chart: lints strictly, renders objects Kubernetes accepts, and wires Tally correctly.

Rendered offline by Helm's Go SDK for three values files (`helm/tally/ci/`): the defaults plus
what is required, everything optional turned off, and a production-shaped release.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import msgspec
import pytest
import yaml

from tally.auth import load_signing_keys
from tally.config import Settings, SettingsError, load_settings
from tests.ops.cli_contract import (
    DEFAULT_PORTS,
    parse_tally_command,
    role_of,
    unknown_settings,
)
from tests.ops.docker_context import parse_stages
from tests.ops.manifests import (
    CASES,
    CHART,
    NAMESPACE,
    Manifest,
    case_values,
    component_name,
    of_kind,
    one,
    pod_labels,
    pod_specs,
    render,
    selects,
)

HTTP_COMPONENTS = ("gateway", "billing", "tenant")
COMPONENTS = (*HTTP_COMPONENTS, "worker")
# Tenant issues people's access tokens, billing verifies them; nothing else holds the keys.
TOKEN_COMPONENTS = ("billing", "tenant")
CHART_META = yaml.safe_load((CHART / "Chart.yaml").read_text())
# The oldest Kubernetes the chart declares, and the newest one with published schemas.
MIN_KUBE = re.search(r"(\d+\.\d+)", CHART_META["kubeVersion"]).group(1)  # type: ignore[union-attr]
LATEST_KUBE = kubernetes_validate.latest_version()
KUBE_VERSIONS = (MIN_KUBE, LATEST_KUBE)
# Objects of CRDs, which Kubernetes' own schemas cannot describe; checked field by field below.
CRD_KINDS = {"ServiceMonitor"}


@pytest.fixture(scope="module", params=CASES)
def case(request: pytest.FixtureRequest) -> str:
    return str(request.param)


_rendered: dict[str, list[Manifest]] = {}


def rendered(case: str) -> list[Manifest]:
    if case not in _rendered:
        _rendered[case] = render(case_values(case))
    return _rendered[case]


def container(manifest: Manifest) -> dict[str, Any]:
    containers = manifest.doc["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, manifest.name
    return dict(containers[0])


# --- lint and schemas -------------------------------------------------------------------------


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_chart_lints_strictly(case: str, kube_version: str) -> None:
    report = helm.lint(CHART, case_values(case), strict=True, kube_version=f"v{kube_version}.0")
    # Severity 1 is informational ("icon is recommended"); --strict fails on 2 (warning) and up.
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


def test_strict_lint_does_catch_a_broken_template(tmp_path: Path) -> None:
    # The lint above passing means something only if the same call fails a bad chart.
    broken = tmp_path / "tally"
    shutil.copytree(CHART, broken)
    (broken / "templates" / "broken.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndata: {{ .Values.nothing.here }}\n"
    )
    report = helm.lint(broken, case_values("default"), strict=True)
    assert report["errors"] or any(m["severity"] >= 2 for m in report["messages"])


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_object_matches_the_kubernetes_schema(case: str, kube_version: str) -> None:
    failures = []
    for manifest in rendered(case):
        if manifest.kind in CRD_KINDS:
            continue
        try:
            # strict: additionalProperties are errors, so a misspelt field is caught too.
            kubernetes_validate.validate(manifest.doc, kube_version, strict=True)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as e:
            failures.append(f"{manifest.template} {manifest.kind}/{manifest.name}: {e}")
    assert failures == []


def test_schema_validation_rejects_a_misspelt_object(case: str) -> None:
    # The same check on a deliberately wrong Deployment, so a silent pass would be noticed.
    deployment = one(rendered(case), "Deployment", "tally-gateway").doc
    misspelt = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, LATEST_KUBE, strict=True)


def test_values_schema_rejects_unknown_and_invalid_values() -> None:
    values = case_values("default")
    with pytest.raises(helm.HelmValuesError, match="replicas"):
        render({**values, "gateway": {"replicas": 3}})
    with pytest.raises(helm.HelmValuesError, match="logLevel"):
        render({**values, "config": {"logLevel": "verbose"}})
    paths = [{"path": "/", "pathType": "Prefix", "service": "worker"}]
    with pytest.raises(helm.HelmValuesError, match="service"):
        render({**values, "ingress": {"enabled": True, "hosts": [{"host": "x", "paths": paths}]}})


def test_config_values_take_exactly_what_the_settings_accept() -> None:
    """`config.*` in values.schema.json mirrors tally.config.Settings: the same choices and the
    same bounds, so a value the chart accepts never stops the pods at start-up."""
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["config"]
    fields = {
        f.name: f.type.type if isinstance(f.type, msgspec.inspect.Metadata) else f.type
        for f in msgspec.inspect.type_info(Settings).fields  # type: ignore[union-attr]
    }
    for key, rule in schema["properties"].items():
        field = fields[re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()]
        if isinstance(field, msgspec.inspect.IntType):
            assert (rule["type"], rule.get("minimum"), rule.get("maximum")) == (
                "integer",
                field.ge,
                field.le,
            ), key
        elif isinstance(field, msgspec.inspect.LiteralType):
            # "" is allowed where the chart leaves the variable out (Tally's default applies).
            assert set(rule["enum"]) - {""} == set(field.values), key
        else:
            assert isinstance(field, msgspec.inspect.StrType) and rule["type"] == "string", key


@pytest.mark.parametrize(
    ("values", "names"),
    [
        ({}, "postgres.url or postgres.existingSecret"),
        ({"postgres": {"url": "postgresql://db/tally"}}, "redis.url or redis.existingSecret"),
        (
            {"postgres": {"url": "postgresql://db/tally"}, "redis": {"url": "redis://r:6379/0"}},
            "secrets.secretKey or secrets.existingSecret",
        ),
        (
            {
                "postgres": {"url": "postgresql://db/tally"},
                "redis": {"url": "redis://r:6379/0"},
                "secrets": {"secretKey": "k1:" + "A" * 43 + "="},
            },
            "secrets.jwtKeys or secrets.existingSecret",
        ),
    ],
)
def test_missing_required_values_fail_the_render_naming_them(
    values: dict[str, Any], names: str
) -> None:
    with pytest.raises(helm.HelmRenderError, match=re.escape(names)):
        render(values)


def test_secret_key_and_jwt_keys_are_optional_outside_production() -> None:
    manifests = render(
        {
            "postgres": {"url": "postgresql://db/tally"},
            "redis": {"url": "redis://r:6379/0"},
            "config": {"env": "dev"},
        }
    )
    env = {e["name"]: e for e in container(one(manifests, "Deployment", "tally-tenant"))["env"]}
    # Outside production Tally generates both in its data folder when they are missing.
    assert env["TALLY_SECRET_KEY"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert env["TALLY_JWT_KEYS"]["valueFrom"]["secretKeyRef"]["optional"] is True


def test_secret_key_and_jwt_keys_are_mandatory_in_production() -> None:
    # An existing Secret without `jwt-keys` must keep the pod from starting, not start it
    # unable to sign anyone in.
    for workload, spec in pod_specs(rendered("production")):
        for entry in spec["containers"][0]["env"]:
            if entry["name"] in ("TALLY_SECRET_KEY", "TALLY_JWT_KEYS"):
                assert "optional" not in entry["valueFrom"]["secretKeyRef"], workload.name


# --- what Tally needs from its pods -------------------------------------------------------------


def test_every_container_runs_a_real_tally_command(case: str) -> None:
    roles = []
    for workload, spec in pod_specs(rendered(case)):
        for c in spec["containers"]:
            args = parse_tally_command([*c["command"], *c.get("args", [])])
            roles.append(role_of(args))
            if workload.kind == "Deployment":
                assert workload.name == component_name(role_of(args))
    expected = [*COMPONENTS, "migrate"] if case != "minimal" else list(COMPONENTS)
    assert sorted(roles) == sorted(expected)


def test_every_variable_is_a_tally_setting(case: str) -> None:
    names: set[str] = set()
    for configmap in of_kind(rendered(case), "ConfigMap"):
        names |= set(configmap.doc["data"])
    for _, spec in pod_specs(rendered(case)):
        for c in spec["containers"]:
            names |= {e["name"] for e in c.get("env", [])}
    assert names, "no environment rendered"
    assert unknown_settings(names) == set()
    assert {n for n in names if not n.startswith("TALLY_")} == set()


def _secret_data(manifest: Manifest) -> dict[str, str]:
    data = {k: base64.b64decode(v).decode() for k, v in (manifest.doc.get("data") or {}).items()}
    return {**data, **(manifest.doc.get("stringData") or {})}


def environment_of(manifests: list[Manifest], workload: Manifest) -> dict[str, str]:
    """What the container's process would see: envFrom, then env (which wins), secrets resolved."""
    configmaps = {m.name: m.doc["data"] for m in of_kind(manifests, "ConfigMap")}
    secrets = {m.name: _secret_data(m) for m in of_kind(manifests, "Secret")}
    c = container(workload)
    environ: dict[str, str] = {}
    for source in c.get("envFrom", []):
        environ.update(configmaps[source["configMapRef"]["name"]])
    for entry in c.get("env", []):
        if "value" in entry:
            environ[entry["name"]] = entry["value"]
            continue
        ref = entry["valueFrom"]["secretKeyRef"]
        assert ref["name"] in secrets, f"{workload.name} reads missing Secret {ref['name']}"
        if ref["key"] in secrets[ref["name"]]:
            environ[entry["name"]] = secrets[ref["name"]][ref["key"]]
        else:
            assert ref.get("optional"), f"{workload.name}: no key {ref['key']} in {ref['name']}"
    return environ


@pytest.mark.parametrize("case", ["default", "minimal"])
def test_each_workload_environment_loads_as_valid_settings(case: str) -> None:
    values = case_values(case)
    manifests = rendered(case)
    workloads = [w for w, _ in pod_specs(manifests)]
    assert workloads
    for workload in workloads:
        try:
            settings = load_settings(environment_of(manifests, workload))
        except SettingsError as exc:
            pytest.fail(f"{workload.name}: {exc}")
        assert settings.production
        assert settings.database_url == values["postgres"]["url"]
        assert settings.secret_key == values["secrets"]["secretKey"]
        assert settings.host == "0.0.0.0"
        if workload.kind == "Deployment":
            assert settings.redis_url == values["redis"]["url"]
        if workload.name in {component_name(c) for c in TOKEN_COMPONENTS}:
            assert settings.jwt_keys == values["secrets"]["jwtKeys"]
            # What the service does at start-up in production; it raises without a ring.
            assert load_signing_keys(settings).current_kid == "j1"
        else:
            assert settings.jwt_keys == "", workload.name


@pytest.mark.parametrize("case", CASES)
def test_only_tenant_and_billing_get_the_token_signing_keys(case: str) -> None:
    for workload, spec in pod_specs(rendered(case)):
        names = {e["name"] for e in spec["containers"][0]["env"]}
        wanted = workload.name in {component_name(c) for c in TOKEN_COMPONENTS}
        assert ("TALLY_JWT_KEYS" in names) == wanted, workload.name


def test_only_billing_and_the_worker_get_the_stripe_keys() -> None:
    manifests = rendered("production")
    for component in COMPONENTS:
        names = {
            e["name"] for e in container(one(manifests, "Deployment", f"tally-{component}"))["env"]
        }
        has_stripe = {"TALLY_STRIPE_API_KEY", "TALLY_STRIPE_WEBHOOK_SECRET"} <= names
        assert has_stripe == (component in ("billing", "worker")), component


def test_existing_secrets_are_read_and_no_secret_is_created() -> None:
    values = case_values("production")
    manifests = rendered("production")
    assert of_kind(manifests, "Secret") == []
    expected = {
        "TALLY_DATABASE_URL": (values["postgres"]["existingSecret"], "dsn"),
        "TALLY_REDIS_URL": (values["redis"]["existingSecret"], "url"),
        "TALLY_SECRET_KEY": (values["secrets"]["existingSecret"], "secret-key"),
        "TALLY_JWT_KEYS": (values["secrets"]["existingSecret"], "jwt-keys"),
    }
    for workload, spec in pod_specs(manifests):
        refs = {
            e["name"]: (
                e["valueFrom"]["secretKeyRef"]["name"],
                e["valueFrom"]["secretKeyRef"]["key"],
            )
            for e in spec["containers"][0]["env"]
            if "valueFrom" in e
        }
        for name, ref in expected.items():
            if workload.kind == "Job" and name == "TALLY_REDIS_URL":
                continue  # migrations need only Postgres
            if name == "TALLY_JWT_KEYS" and workload.name not in {
                component_name(c) for c in TOKEN_COMPONENTS
            }:
                continue
            assert refs[name] == ref, (workload.name, name)


def test_extra_env_overrides_the_config_map_and_is_not_duplicated() -> None:
    manifests = rendered("production")
    for _, spec in pod_specs(manifests):
        names = [e["name"] for e in spec["containers"][0]["env"]]
        assert len(names) == len(set(names)), names
        assert {"name": "TALLY_MAX_BODY_BYTES", "value": "8388608"} in spec["containers"][0]["env"]


# --- HTTP services -----------------------------------------------------------------------------


def test_http_services_listen_on_their_setting_port_with_health_probes(case: str) -> None:
    manifests = rendered(case)
    for component in HTTP_COMPONENTS:
        c = container(one(manifests, "Deployment", component_name(component)))
        assert c["ports"] == [
            {"name": "http", "containerPort": DEFAULT_PORTS[component], "protocol": "TCP"}
        ]
        for probe, path in (
            ("startupProbe", "/healthz"),
            ("livenessProbe", "/healthz"),
            ("readinessProbe", "/readyz"),
        ):
            assert c[probe]["httpGet"] == {"path": path, "port": "http"}, (component, probe)
    worker = container(one(manifests, "Deployment", component_name("worker")))
    assert "ports" not in worker and "livenessProbe" not in worker


def test_each_service_reaches_exactly_its_own_pods(case: str) -> None:
    manifests = rendered(case)
    deployments = of_kind(manifests, "Deployment")
    services = of_kind(manifests, "Service")
    assert sorted(s.name for s in services) == sorted(component_name(c) for c in HTTP_COMPONENTS)
    for service in services:
        targets = [
            d for d in deployments if selects(service.doc["spec"]["selector"], pod_labels(d))
        ]
        assert [d.name for d in targets] == [service.name]
        port_names = {p["name"] for p in container(targets[0])["ports"]}
        assert {p["targetPort"] for p in service.doc["spec"]["ports"]} <= port_names


def test_deployment_selectors_match_their_own_pods_only(case: str) -> None:
    deployments = of_kind(rendered(case), "Deployment")
    for deployment in deployments:
        selector = deployment.doc["spec"]["selector"]
        assert [d.name for d in deployments if selects(selector, pod_labels(d))] == [
            deployment.name
        ]


# --- security ----------------------------------------------------------------------------------


def test_every_pod_runs_locked_down(case: str) -> None:
    runtime = parse_stages()[-1]
    image_uid = int(runtime.last("USER").value[0].split(":")[0])  # type: ignore[union-attr]
    for workload, spec in pod_specs(rendered(case)):
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] == image_uid, workload.name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        tmp_volumes = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, workload.name
            assert sc["readOnlyRootFilesystem"] is True, workload.name
            assert sc["capabilities"] == {"drop": ["ALL"]}, workload.name
            assert sc["runAsNonRoot"] is True
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert mounts.get("/tmp") in tmp_volumes, workload.name


def test_every_container_has_resources_unless_turned_off(case: str) -> None:
    for workload, spec in pod_specs(rendered(case)):
        resources = spec["containers"][0].get("resources") or {}
        if case == "minimal" and workload.kind == "Deployment":
            assert resources == {}
            continue
        assert {"cpu", "memory"} <= set(resources["requests"]), workload.name
        assert "memory" in resources["limits"], workload.name


# --- migrations hook ---------------------------------------------------------------------------


def _hook_weight(manifest: Manifest) -> int:
    return int(manifest.annotations.get("helm.sh/hook-weight", "0"))


@pytest.mark.parametrize("case", ["default", "production"])
def test_migrations_run_before_install_and_upgrade_with_only_hook_objects(case: str) -> None:
    """A pre-install hook runs before the release's own objects exist: the Job may read only
    objects created earlier in the same hook phase, or ones that already exist outside Helm."""
    values = case_values(case)
    manifests = rendered(case)
    job = one(manifests, "Job", component_name("migrate"))
    assert set(job.annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    spec = job.doc["spec"]["template"]["spec"]
    assert spec["restartPolicy"] == "Never"
    hooks_before_job = {
        (m.kind, m.name)
        for m in manifests
        if "helm.sh/hook" in m.annotations
        and set(m.annotations["helm.sh/hook"].split(",")) >= {"pre-install", "pre-upgrade"}
        and _hook_weight(m) < _hook_weight(job)
    }
    existing = {
        values.get(group, {}).get("existingSecret") for group in ("postgres", "redis", "secrets")
    } - {None, ""}
    c = spec["containers"][0]
    assert "envFrom" not in c or all("configMapRef" not in s for s in c["envFrom"])
    for entry in c["env"]:
        if "valueFrom" in entry:
            name = entry["valueFrom"]["secretKeyRef"]["name"]
            assert ("Secret", name) in hooks_before_job or name in existing, entry
    if values.get("serviceAccount", {}).get("create", True):
        assert ("ServiceAccount", spec["serviceAccountName"]) in hooks_before_job


def test_the_hook_secret_copies_the_release_secret() -> None:
    manifests = rendered("default")
    release_secret = _secret_data(one(manifests, "Secret", "tally"))
    hook_secret = _secret_data(one(manifests, "Secret", "tally-migrate"))
    assert hook_secret == release_secret
    assert (
        "hook-succeeded"
        in one(manifests, "Secret", "tally-migrate").annotations["helm.sh/hook-delete-policy"]
    )


def test_the_migration_job_sees_the_same_settings_as_the_services() -> None:
    manifests = rendered("default")
    job_env = environment_of(manifests, one(manifests, "Job", "tally-migrate"))
    gateway_env = environment_of(manifests, one(manifests, "Deployment", "tally-gateway"))
    # Everything but Redis, which migrations do not use.
    gateway_env.pop("TALLY_REDIS_URL")
    assert job_env == gateway_env


# --- optional parts ----------------------------------------------------------------------------


def test_minimal_values_leave_every_optional_object_out() -> None:
    kinds = {m.kind for m in rendered("minimal")}
    assert kinds == {"ConfigMap", "Secret", "Deployment", "Service"}
    for _, spec in pod_specs(rendered("minimal")):
        assert spec["serviceAccountName"] == "default"
        assert spec["volumes"] == [{"name": "tmp", "emptyDir": {}}]


def test_default_values_create_budgets_but_no_autoscaler_or_exposure() -> None:
    manifests = rendered("default")
    kinds = {m.kind for m in manifests}
    assert "HorizontalPodAutoscaler" not in kinds
    assert not kinds & {"Ingress", "ServiceMonitor", "NetworkPolicy"}
    assert one(manifests, "Deployment", "tally-gateway").doc["spec"]["replicas"] == 2
    pdbs = of_kind(manifests, "PodDisruptionBudget")
    deployments = of_kind(manifests, "Deployment")
    assert len(pdbs) == len(COMPONENTS)
    for pdb in pdbs:
        selector = pdb.doc["spec"]["selector"]
        assert [d.name for d in deployments if selects(selector, pod_labels(d))] == [pdb.name]
        # maxUnavailable keeps a single-replica Deployment drainable, unlike minAvailable: 1.
        assert pdb.doc["spec"]["maxUnavailable"] == 1


def test_the_gateway_autoscaler_owns_its_replica_count() -> None:
    values = case_values("production")["gateway"]["autoscaling"]
    manifests = rendered("production")
    hpa = one(manifests, "HorizontalPodAutoscaler", "tally-gateway").doc["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "tally-gateway",
    }
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (
        values["minReplicas"],
        values["maxReplicas"],
    )
    targets = {
        m["resource"]["name"]: m["resource"]["target"]["averageUtilization"] for m in hpa["metrics"]
    }
    assert targets == {
        "cpu": values["targetCPUUtilizationPercentage"],
        "memory": values["targetMemoryUtilizationPercentage"],
    }
    # A fixed replica count would be reset on every `helm upgrade`, fighting the autoscaler.
    assert "replicas" not in one(manifests, "Deployment", "tally-gateway").doc["spec"]
    assert one(manifests, "Deployment", "tally-billing").doc["spec"]["replicas"] == 3


def test_ingress_routes_each_host_to_its_service() -> None:
    values = case_values("production")["ingress"]
    manifests = rendered("production")
    ingress = one(manifests, "Ingress", "tally").doc["spec"]
    assert ingress["ingressClassName"] == values["className"]
    assert ingress["tls"] == values["tls"]
    routes = {
        (rule["host"], path["path"]): path["backend"]["service"]
        for rule in ingress["rules"]
        for path in rule["http"]["paths"]
    }
    wanted = {
        (host["host"], path["path"]): path["service"]
        for host in values["hosts"]
        for path in host["paths"]
    }
    assert {key: backend["name"] for key, backend in routes.items()} == {
        key: component_name(service) for key, service in wanted.items()
    }
    services = {
        s.name: {p["name"] for p in s.doc["spec"]["ports"]} for s in of_kind(manifests, "Service")
    }
    for backend in routes.values():
        assert backend["port"]["name"] in services[backend["name"]]


def test_service_monitor_scrapes_metrics_of_the_http_services_only() -> None:
    manifests = rendered("production")
    monitor = one(manifests, "ServiceMonitor", "tally")
    assert monitor.doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor.doc["metadata"]["labels"]["release"] == "prometheus"
    spec = monitor.doc["spec"]
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    scraped = [
        s.name
        for s in of_kind(manifests, "Service")
        if selects(spec["selector"], s.doc["metadata"]["labels"])
    ]
    assert sorted(scraped) == sorted(component_name(c) for c in HTTP_COMPONENTS)
    assert [(e["port"], e["path"]) for e in spec["endpoints"]] == [("http", "/metrics")]
    assert spec["endpoints"][0]["interval"] == "15s"


def test_network_policies_admit_only_the_configured_peers() -> None:
    values = case_values("production")["networkPolicy"]
    manifests = rendered("production")
    deployments = {d.name: d for d in of_kind(manifests, "Deployment")}
    for component in COMPONENTS:
        policy = one(manifests, "NetworkPolicy", component_name(component)).doc["spec"]
        selected = [
            n for n, d in deployments.items() if selects(policy["podSelector"], pod_labels(d))
        ]
        assert selected == [component_name(component)]
        assert policy["policyTypes"] == ["Ingress"]
        if component == "worker":
            assert policy["ingress"] == []  # listens on nothing
        else:
            assert policy["ingress"] == [
                {"ports": [{"port": "http", "protocol": "TCP"}], "from": values["ingressFrom"]}
            ]
    egress = one(manifests, "NetworkPolicy", "tally-egress").doc["spec"]
    job = one(manifests, "Job", "tally-migrate")
    for workload in [*deployments.values(), job]:
        assert selects(egress["podSelector"], pod_labels(workload)), workload.name
    assert {"port": 53, "protocol": "UDP"} in egress["egress"][0]["ports"]
    assert egress["egress"][1:] == values["egress"]


def test_spread_constraints_get_each_components_selector() -> None:
    manifests = rendered("production")
    for component in COMPONENTS:
        deployment = one(manifests, "Deployment", component_name(component))
        (constraint,) = deployment.doc["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert constraint["topologyKey"] == "topology.kubernetes.io/zone"
        assert selects(constraint["labelSelector"], pod_labels(deployment))
        others = [d for d in of_kind(manifests, "Deployment") if d.name != deployment.name]
        assert not any(selects(constraint["labelSelector"], pod_labels(d)) for d in others)


def test_a_changed_setting_or_secret_rolls_the_pods() -> None:
    values = case_values("default")

    def annotations(overrides: dict[str, Any]) -> dict[str, str]:
        manifests = render({**values, **overrides})
        template = one(manifests, "Deployment", "tally-gateway").doc["spec"]["template"]
        return dict(template["metadata"]["annotations"])

    base = annotations({})
    debug = annotations({"config": {"logLevel": "debug"}})
    secrets = values["secrets"]
    rotated = annotations({"secrets": {**secrets, "secretKey": "k2:" + "B" * 43 + "="}})
    jwt_rotated = annotations(
        {"secrets": {**secrets, "jwtKeys": "j2:" + "B" * 43 + "=," + secrets["jwtKeys"]}}
    )
    assert debug["checksum/config"] != base["checksum/config"]
    assert debug["checksum/secret"] == base["checksum/secret"]
    for changed in (rotated, jwt_rotated):
        assert changed["checksum/secret"] != base["checksum/secret"]
        assert changed["checksum/config"] == base["checksum/config"]


def test_image_defaults_to_the_app_version_and_can_be_pinned_by_digest() -> None:
    values = case_values("default")
    image = container(one(render(values), "Deployment", "tally-gateway"))["image"]
    assert image == f"tally:{CHART_META['appVersion']}"
    digest = "sha256:" + "a" * 64
    pinned = render({**values, "image": {"repository": "r.example/tally", "digest": digest}})
    for _, spec in pod_specs(pinned):
        assert spec["containers"][0]["image"] == f"r.example/tally@{digest}"
