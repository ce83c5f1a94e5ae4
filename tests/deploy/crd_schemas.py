"""JSON schemas of the custom resources the Kubernetes manifests use, written here from their API
references (the upstream CRDs cannot be fetched offline): the fields deploy/kubernetes sets, their
types and required-ness, and no unknown fields, so a typo or a field from another API version fails."""

from __future__ import annotations

from typing import Any

_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 253}
_PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {"type": "object", "required": ["name"], "properties": {"name": _NAME, "namespace": _NAME,
                                                                    "labels": _LABELS, "annotations": _LABELS}}


def _closed(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def _resource(spec: dict[str, Any]) -> dict[str, Any]:
    return _closed({"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": _METADATA,
                    "spec": spec}, ["apiVersion", "kind", "metadata", "spec"])


_SELECTOR = _closed({"matchLabels": {**_LABELS, "minProperties": 1}}, ["matchLabels"])

# inference.networking.k8s.io/v1 InferencePool: selector.matchLabels, targetPorts (exactly one in
# v1), endpointPickerRef {group, kind, name, port.number, failureMode}.
INFERENCE_POOL = _resource(_closed({
    "selector": _SELECTOR,
    "targetPorts": {"type": "array", "minItems": 1, "maxItems": 1, "items": _closed({"number": _PORT}, ["number"])},
    "endpointPickerRef": _closed({
        "group": {"type": "string"}, "kind": {"type": "string"}, "name": _NAME,
        "port": _closed({"number": _PORT}, ["number"]),
        "failureMode": {"enum": ["FailOpen", "FailClose"]},
    }, ["name", "port"]),
}, ["selector", "targetPorts", "endpointPickerRef"]))

# monitoring.coreos.com/v1 ServiceMonitor: a label selector and endpoints by named port.
SERVICE_MONITOR = _resource(_closed({
    "selector": _SELECTOR,
    "endpoints": {"type": "array", "minItems": 1, "items": _closed({
        "port": {"type": "string"}, "path": {"type": "string", "pattern": "^/"},
        "interval": {"type": "string", "pattern": r"^[0-9]+(ms|s|m|h)$"}, "scheme": {"enum": ["http", "https"]},
    }, ["port"])},
}, ["selector", "endpoints"]))

_PARENT_REF = _closed({"group": {"type": "string"}, "kind": {"type": "string"}, "name": _NAME,
                       "namespace": _NAME, "sectionName": {"type": "string"}}, ["name"])
_BACKEND_REF = _closed({"group": {"type": "string"}, "kind": {"type": "string"}, "name": _NAME,
                        "namespace": _NAME, "port": _PORT, "weight": {"type": "integer", "minimum": 0}}, ["name"])
_DURATION = {"type": "string", "pattern": r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"}

# gateway.networking.k8s.io/v1 HTTPRoute: parentRefs, rules of path matches, backendRefs, timeouts.
HTTP_ROUTE = _resource(_closed({
    "parentRefs": {"type": "array", "minItems": 1, "items": _PARENT_REF},
    "rules": {"type": "array", "minItems": 1, "items": _closed({
        "matches": {"type": "array", "items": _closed({"path": _closed({
            "type": {"enum": ["Exact", "PathPrefix", "RegularExpression"]}, "value": {"type": "string"}},
            ["type", "value"])}, [])},
        "backendRefs": {"type": "array", "minItems": 1, "items": _BACKEND_REF},
        "timeouts": _closed({"request": _DURATION, "backendRequest": _DURATION}, []),
    }, ["backendRefs"])},
}, ["parentRefs", "rules"]))

BY_KIND = {("inference.networking.k8s.io/v1", "InferencePool"): INFERENCE_POOL,
           ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
           ("gateway.networking.k8s.io/v1", "HTTPRoute"): HTTP_ROUTE}
