"""Names and labels of the installed objects, shared by deploy/base and the chart's checks."""

from __future__ import annotations

from typing import Final

from ..api.names import COMPONENT_MODEL_SERVER, LABEL_COMPONENT

NAMESPACE: Final = "vllm-sleep-system"
OPERATOR: Final = "vllm-sleep-operator"
GATEWAY: Final = "vllm-sleep-gateway"
MODEL_POLICY: Final = "vllm-sleep-model-pods"  # the NetworkPolicy in each model namespace
PART_OF: Final = {"app.kubernetes.io/part-of": "vllm-sleep-operator"}
NAME_LABEL: Final = "app.kubernetes.io/name"
MODEL_POD_SELECTOR: Final = {LABEL_COMPONENT: COMPONENT_MODEL_SERVER}
# Labels Helm's conventions add to the chart's objects and deploy/ cannot know.
HELM_ONLY_LABELS: Final = (
    "helm.sh/chart",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/managed-by",
)


def labels(component: str | None = None) -> dict[str, str]:
    return {**PART_OF, **({NAME_LABEL: component} if component else {})}


def selector(component: str) -> dict[str, str]:
    return {NAME_LABEL: component}
