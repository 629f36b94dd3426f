"""deploy/kubernetes: every manifest validates against the Kubernetes API schemas (strict: no
unknown field), the ServiceMonitor against the Prometheus Operator's CRD schema, and the
objects fit together (probes, named ports, volumes, the token, the GPU variant)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from service_helpers import parse_serve_args

REPO = Path(__file__).resolve().parents[3]
K8S = REPO / "deploy" / "kubernetes"
SERVICEMONITOR_SCHEMA = Path(__file__).parent / "data" / "servicemonitor-v1.schema.json"
MANIFESTS = sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _objects() -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for p in MANIFESTS for d in _documents(p)}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(K8S)))
def test_manifest_validates(path: Path) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="install the deploy extra (pip install -e '.[deploy]'), as make test does")
    for document in _documents(path):
        if document["apiVersion"] == "monitoring.coreos.com/v1":
            _validate_custom_resource(document)
            continue
        version = kubernetes_validate.latest_version()
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            raise AssertionError(f"{path.name}: {document['kind']}: {err.message} at {list(err.path)}") from None


def _strict(schema: Any) -> Any:
    """A CRD schema that refuses unknown fields (the API server would silently drop them)."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema.setdefault("additionalProperties", False)
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def _validate_custom_resource(document: dict[str, Any]) -> None:
    assert document["kind"] == "ServiceMonitor"
    schema = _strict(json.loads(SERVICEMONITOR_SCHEMA.read_text()))
    jsonschema.validate(document, schema)


def test_a_misspelt_field_is_refused() -> None:
    """The validation above can fail."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    deployment = _objects()[("Deployment", "secateurs")]
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {"grpc": {"port": 50051}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)
    monitor = json.loads(json.dumps(_objects()[("ServiceMonitor", "secateurs")]))
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError):
        _validate_custom_resource(monitor)


def test_kustomizations_list_every_manifest() -> None:
    listed = set()
    for kustomization in K8S.rglob("kustomization.yaml"):
        for resource in yaml.safe_load(kustomization.read_text())["resources"]:
            assert (kustomization.parent / resource).exists(), f"{kustomization}: {resource}"
            listed.add((kustomization.parent / resource).resolve())
    assert listed == {p.resolve() for p in MANIFESTS}


def _server(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("name", ["secateurs", "secateurs-gpu"])
def test_server_deployment(name: str) -> None:
    objects = _objects()
    deployment = objects[("Deployment", name)]
    pod = deployment["spec"]["template"]["spec"]
    container = _server(deployment)
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    assert container["args"][0] == "serve"
    args = parse_serve_args(container["args"][1:])
    assert args.listen == "0.0.0.0:50051" and args.metrics_listen == "0.0.0.0:9464"
    assert pod["terminationGracePeriodSeconds"] > args.grace
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 50051, "metrics": 9464}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):  # native gRPC probes
        assert container[probe]["grpc"] == {"port": ports["grpc"]}, probe
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 10001
    # The data dir is the claim; the token comes from the Secret.
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    claim = volumes[mounts[str(args.data_dir)]]["persistentVolumeClaim"]["claimName"]
    assert ("PersistentVolumeClaim", claim) in objects
    (token,) = [e for e in container["env"] if e["name"] == "SECATEURS_TOKEN"]
    secret = token["valueFrom"]["secretKeyRef"]
    assert secret["key"] in objects[("Secret", secret["name"])]["stringData"]
    # The Service routes to these pods by named ports, and the ServiceMonitor scrapes it.
    service = objects[("Service", name)]
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {"grpc": "grpc", "metrics": "metrics"}
    monitor = objects[("ServiceMonitor", "secateurs")]["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["endpoints"]] == ["metrics"]


def test_gpu_variant_differs_only_where_it_must() -> None:
    objects = _objects()
    cpu, gpu = objects[("Deployment", "secateurs")], objects[("Deployment", "secateurs-gpu")]
    pod = gpu["spec"]["template"]["spec"]
    assert _server(gpu)["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert _server(gpu)["image"].endswith("-cuda") and _server(cpu)["image"].endswith("-cpu")
    # Everything else is the CPU server's (so the two cannot drift apart unnoticed).
    same = ("args", "ports", "startupProbe", "readinessProbe", "livenessProbe", "env", "securityContext",
            "volumeMounts")
    for key in same:
        assert _server(gpu)[key] == _server(cpu)[key], key
    assert pod["securityContext"] == cpu["spec"]["template"]["spec"]["securityContext"]
    # Its own data dir: one server per volume.
    claims = {v["persistentVolumeClaim"]["claimName"] for d in (cpu, gpu)
              for v in d["spec"]["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"secateurs-data", "secateurs-gpu-data"}


def test_probe_daemonset_runs_on_gpu_nodes() -> None:
    objects = _objects()
    daemonset = objects[("DaemonSet", "secateurs-probe")]
    pod = daemonset["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    service = objects[("Service", "secateurs-probe")]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= daemonset["spec"]["template"]["metadata"]["labels"].items()
    from secateurs.probe.server import build_parser

    assert container["args"][0] == "probe"
    args = build_parser().parse_args(container["args"][1:])
    assert args.listen == "0.0.0.0:50052"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"probe": 50052}
    assert args.tls_cert and args.tls_key  # the token travels over TLS only
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    tls = {v["name"]: v for v in pod["volumes"]}[mounts[str(args.tls_cert.parent)]]["secret"]["secretName"]
    assert {"tls.crt", "tls.key", "ca.crt"} <= set(objects[("Secret", tls)]["stringData"])
    from secateurs.healthcheck import build_parser as health_parser

    for probe in ("readinessProbe", "livenessProbe"):  # grpc.health.v1 over TLS, from inside the container
        command = container[probe]["exec"]["command"]
        health = health_parser().parse_args(command[1:])
        assert command[0] == "secateurs-healthcheck" and health.tls and health.address.endswith(":50052")
    assert [e["name"] for e in container["env"]] == ["SECATEURS_PROBE_TOKEN"]
    # The servers list the probes jobs may name, and trust the CA that signed the probes' certificate.
    server = _server(objects[("Deployment", "secateurs")])
    serve = parse_serve_args(server["args"][1:])
    assert serve.probe_tls_ca.name == "ca.crt" and serve.probes_file
    server_mounts = {m["mountPath"]: m["name"] for m in server["volumeMounts"]}
    server_volumes = {v["name"]: v for v in objects[("Deployment", "secateurs")]["spec"]["template"]["spec"]["volumes"]}
    assert server_volumes[server_mounts[str(serve.probe_tls_ca.parent)]]["secret"]["secretName"] == tls
    listing = server_volumes[server_mounts[str(serve.probes_file[0].parent)]]["configMap"]["name"]
    assert serve.probes_file[0].name in objects[("ConfigMap", listing)]["data"]
    # The servers present the token the probes require.
    server_env = {e["name"]: e for e in _server(objects[("Deployment", "secateurs")])["env"]}
    assert server_env["SECATEURS_PROBE_TOKEN"]["valueFrom"] == container["env"][0]["valueFrom"]
