"""A ModelDeployment's spec as the lifecycle decision sees it. Pure."""

from __future__ import annotations

from ..api.model_deployment import ModelDeploymentSpec
from .lifecycle import ModelPolicy, Policy


def policy_from_spec(spec: ModelDeploymentSpec) -> ModelPolicy:
    return ModelPolicy(
        policy=Policy(spec.sleep.policy.value),
        level=int(spec.sleep.level),
        idle_timeout=spec.sleep.idle_timeout.total_seconds(),
        min_awake=spec.placement.min_awake.total_seconds(),
        wake_on_request=spec.wake.on_request,
        # Never in a pool: there a wake may need an eviction only the pool's plan may order.
        agent_wake=(
            spec.sleep.policy.value == Policy.AUTO
            and spec.wake.on_request
            and spec.placement.pool is None
        ),
    )
