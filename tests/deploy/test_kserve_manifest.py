"""deploy/kserve/inferenceservice.yaml: ExplainServe as a KServe InferenceService's explainer.

No reachable registry ships KServe's CRD schema (the Go module proxy refuses
github.com/kserve/kserve, and neither PyPI nor npm carries the CRD file), so the manifest is
checked against KServe's own API types as its Python SDK generates them from the same Go types
(`kserve/models/v1beta1_*.py`: every field's JSON name and type, and the required ones), read
from the SDK's wheel as data (`make k8s-tools` downloads it pinned, hash-checked; it is never
installed), with the Kubernetes types it embeds (containers, probes, resources) checked against
kubernetes-validate's strict schemas. Then its fields are checked against the server: the
explainer's arguments are a valid `explainserve serve` command line, its port and probes are the
HTTP server's, and the model name is the InferenceService's (KServe sends
/v1/models/<name>:explain)."""

from __future__ import annotations

import ast
import copy
import json
import re
import zipfile
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from explainserve.cli import build_parser, config_from_args

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy" / "kserve" / "inferenceservice.yaml"
SCHEMAS = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
#: The newest Kubernetes kubernetes-validate has schemas of (KServe 0.21 embeds recent PodSpec
#: fields, such as schedulingGroup).
K8S_VERSION = "v1.37.0"
#: Types the SDK names but does not define: Kubernetes' own under another name, and Knative's
#: (status only).
_K8S_ALIASES = {
    "V1ObjectMeta": "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
    "V1Time": "io.k8s.apimachinery.pkg.apis.meta.v1.Time",
    "ResourceQuantity": "io.k8s.apimachinery.pkg.api.resource.Quantity",
    "V1beta1MetricQuantity": "io.k8s.apimachinery.pkg.api.resource.Quantity",
}
_KNATIVE = {"KnativeURL": {"type": "string"}, "KnativeAddressable": {"type": "object"}}
_SCALARS = {
    "str": {"type": "string"},
    "int": {"type": "integer"},
    "bool": {"type": "boolean"},
    "float": {"type": "number"},
    "object": {},
    "datetime": {"type": "string"},
}


def sdk_wheel() -> Path:
    makefile = (ROOT / "Makefile").read_text()
    match = re.search(r"KSERVE_SDK_VERSION := (\S+)", makefile)
    assert match is not None
    wheel = ROOT / ".make" / "kserve" / f"kserve-{match.group(1)}-py3-none-any.whl"
    if not wheel.exists():
        pytest.fail(f"{wheel.relative_to(ROOT)} is missing: run `make k8s-tools` (make test does)")
    return wheel


@cache
def sdk_models() -> dict[str, tuple[dict[str, str], dict[str, str], set[str]]]:
    """Per SDK model class: attribute -> type, attribute -> JSON name, required attributes."""
    out = {}
    with zipfile.ZipFile(sdk_wheel()) as wheel:
        for name in wheel.namelist():
            if not re.fullmatch(r"kserve/models/v1(alpha\d|beta\d)?_\w+\.py", name):
                continue
            source = wheel.read(name).decode()
            for node in ast.parse(source).body:
                if not isinstance(node, ast.ClassDef):
                    continue
                tables: dict[str, dict[str, str]] = {}
                for item in node.body:
                    if (
                        isinstance(item, ast.Assign)
                        and isinstance(item.targets[0], ast.Name)
                        and item.targets[0].id in ("openapi_types", "attribute_map")
                    ):
                        tables[item.targets[0].id] = ast.literal_eval(item.value)
                required = set(re.findall(r"Invalid value for `(\w+)`, must not be `None`", source))
                out[node.name] = (tables["openapi_types"], tables["attribute_map"], required)
    return out


def k8s_definitions() -> dict[str, Any]:
    path = SCHEMAS / f"{K8S_VERSION}-local-strict" / "_definitions.json"
    text = path.read_text().replace('"/api/_definitions.json#/$defs/', '"#/$defs/')
    definitions: dict[str, Any] = json.loads(text)["$defs"]
    return definitions


def schema_of(kind: str) -> dict[str, Any]:
    """The JSON schema of the SDK type `kind` (strict: no field the type does not have), its
    Kubernetes types by reference into kubernetes-validate's definitions."""
    k8s = k8s_definitions()
    models = sdk_models()
    defs: dict[str, Any] = dict(k8s)

    def ref(type_name: str) -> dict[str, Any]:
        if type_name in _SCALARS:
            return _SCALARS[type_name]
        if type_name in _KNATIVE:
            return _KNATIVE[type_name]
        if type_name.startswith("list[") and type_name.endswith("]"):
            return {"type": "array", "items": ref(type_name[5:-1])}
        if type_name.startswith("dict(str, ") and type_name.endswith(")"):
            return {"type": "object", "additionalProperties": ref(type_name[10:-1])}
        if type_name in models:
            if f"kserve.{type_name}" not in defs:
                defs[f"kserve.{type_name}"] = {}
                defs[f"kserve.{type_name}"] = model(type_name)
            return {"$ref": f"#/$defs/kserve.{type_name}"}
        return {"$ref": f"#/$defs/{k8s_name(type_name)}"}

    def model(type_name: str, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
        types, names, required = models[type_name]
        return {
            "type": "object",
            "properties": {names[attr]: ref(t) for attr, t in types.items() if attr not in skip},
            "required": sorted(names[attr] for attr in required),
            "additionalProperties": False,
        }

    def k8s_name(type_name: str) -> str:
        if type_name in _K8S_ALIASES:
            return _K8S_ALIASES[type_name]
        match = re.fullmatch(r"K8sIoApi([A-Z][a-z]+)(V\d\w*?)([A-Z]\w*)", type_name)
        if match:
            group, version, kind = match.groups()
            return f"io.k8s.api.{group.lower()}.{version.lower()}.{kind}"
        match = re.fullmatch(r"(V\d+(?:alpha\d+|beta\d+)?)([A-Z]\w*)", type_name)
        assert match is not None, f"no Kubernetes type for the SDK's {type_name}"
        version, kind = match.group(1).lower(), match.group(2)
        found = sorted(k for k in k8s if k.endswith(f".{version}.{kind}"))
        core = [k for k in found if k.startswith("io.k8s.api.core.")]
        assert found, f"no Kubernetes type for the SDK's {type_name}"
        return (core or found)[0]

    # The status is the controller's to write (and brings Knative's types): not in a manifest.
    root = model(kind, frozenset({"status"}))
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **root, "$defs": defs}


@cache
def validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema_of("V1beta1InferenceService"))


def manifest() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(MANIFEST.read_text())
    return document


def test_the_manifest_is_valid_for_kserves_api_types() -> None:
    document = manifest()
    assert (document["apiVersion"], document["kind"]) == (
        "serving.kserve.io/v1beta1",
        "InferenceService",
    )
    errors = sorted(validator().iter_errors(document), key=str)
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors]


def _explainer(document: dict[str, Any]) -> Any:
    return document["spec"]["explainer"]


def _container(document: dict[str, Any]) -> Any:
    return document["spec"]["explainer"]["containers"][0]


@pytest.mark.parametrize(
    "breaks",
    [
        lambda d: _explainer(d).update(containerz=[]),
        lambda d: _container(d).update(imagePullPolicyy="Always"),
        lambda d: _container(d)["ports"][0].update(containerPort="8080"),
        lambda d: _explainer(d)["storageUris"][0].update(uri=3),
        lambda d: _container(d).pop("name"),
        lambda d: d["spec"]["predictor"]["model"].update(storageUri=["a"]),
    ],
    ids=[
        "unknown-field",
        "unknown-k8s-field",
        "wrong-k8s-type",
        "wrong-type",
        "missing-required-k8s-field",
        "wrong-kserve-type",
    ],
)
def test_the_check_refuses_a_broken_manifest(breaks: Any) -> None:
    document = copy.deepcopy(manifest())
    breaks(document)
    assert list(validator().iter_errors(document))


def test_the_explainer_is_the_server_on_its_http_port() -> None:
    document = manifest()
    name = document["metadata"]["name"]
    (container,) = document["spec"]["explainer"]["containers"]
    args = container["args"]
    assert args[0] == "serve"
    config = config_from_args(build_parser().parse_args(args))
    (storage,) = document["spec"]["explainer"]["storageUris"]
    assert storage["uri"] == document["spec"]["predictor"]["model"]["storageUri"]
    # The served model is the InferenceService's name, from the storage KServe mounts.
    assert config.models == {name: Path(storage["mountPath"])}
    assert f"--model_name={name}" in document["spec"]["predictor"]["model"]["args"]
    (port,) = container["ports"]
    assert port["containerPort"] == config.server.http_port == 8080
    assert config.server.host == "0.0.0.0"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        check = container[probe]["httpGet"]
        assert check["port"] == 8080
        assert check["path"] in ("/v2/health/ready", "/v2/health/live")
    grace = document["spec"]["explainer"]["terminationGracePeriodSeconds"]
    assert grace > config.server.grace_seconds + config.server.drain_delay_s


def test_the_probes_are_open_routes_of_the_http_server() -> None:
    from explainserve.http import oip_rest

    class _Stub:
        is_ready = staticmethod(lambda: True)

    ops = {op.route: op for op in oip_rest.operations(_Stub())}  # type: ignore[arg-type]
    for path in ("/v2/health/ready", "/v2/health/live"):
        assert ops[path].open
        assert ops[path].verb == "GET"
