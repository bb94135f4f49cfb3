"""The Grafana dashboard and the Prometheus alerts shipped in the chart (charts/.../files/).

Every series they query is one the operator, the gateway or the agents export; a unit test reads
the names out of the expressions and checks each against the processes' metric registries.
No panel shows evictions: no component counts them yet (the operator records an Event instead).
"""

from __future__ import annotations

from typing import Any, NamedTuple

DASHBOARD_UID = "vllm-sleep-overview"
RATE = "[5m]"
_DS = {"type": "prometheus", "uid": "${datasource}"}


class Panel(NamedTuple):
    title: str
    targets: list[tuple[str, str]]  # (PromQL expression, legend)
    unit: str = "short"
    description: str = ""


def _panel(pid: int, spec: Panel, *, x: int, y: int) -> dict[str, Any]:
    return {
        "id": pid,
        "type": "timeseries",
        "title": spec.title,
        "description": spec.description,
        "datasource": _DS,
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": spec.unit}, "overrides": []},
        "options": {},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": _DS, "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(spec.targets)
        ],
    }


def _quantile(q: float, bucket: str, by: str) -> str:
    return f"histogram_quantile({q}, sum by (le, {by}) (rate({bucket}{RATE})))"


def _quantiles(bucket: str, by: str, legend: str, *qs: float) -> list[tuple[str, str]]:
    """One target per quantile of one histogram, its legend led by pNN."""
    return [(_quantile(q, bucket, by), f"p{round(q * 100)} {legend}") for q in qs]


def dashboard() -> dict[str, Any]:
    specs = [
        Panel(
            "Models by phase",
            [("sum by (phase) (vllm_sleep_models)", "{{phase}}")],
            description="ModelDeployments in each phase (operator).",
        ),
        Panel(
            "Engines by state",
            [("sum by (state) (vllm_sleep_agent_state)", "{{state}}")],
            description="Model pods' engines in each state, as their agents report it.",
        ),
        Panel(
            "Sleeps and wakes per second",
            [
                (
                    f"sum by (transition, outcome) (rate(vllm_sleep_transitions_total{RATE}))",
                    "{{transition}} {{outcome}}",
                )
            ],
            unit="ops",
        ),
        Panel(
            "Transition duration (p50, p95)",
            _quantiles(
                "vllm_sleep_transition_duration_seconds_bucket",
                "transition, level",
                "{{transition}} L{{level}}",
                0.5,
                0.95,
            ),
            unit="s",
        ),
        Panel(
            "Requests held for a wake",
            [
                ("sum by (model) (vllm_sleep_gateway_held_requests)", "gateway {{model}}"),
                ("sum(vllm_sleep_agent_requests_held)", "agents"),
            ],
        ),
        Panel(
            "Hold time by outcome (p95)",
            [
                (
                    _quantile(0.95, "vllm_sleep_gateway_hold_seconds_bucket", "outcome"),
                    "gateway {{outcome}}",
                ),
                (
                    _quantile(0.95, "vllm_sleep_agent_hold_duration_seconds_bucket", "outcome"),
                    "agent {{outcome}}",
                ),
            ],
            unit="s",
        ),
        Panel(
            "Gateway requests by status",
            [(f"sum by (code) (rate(vllm_sleep_gateway_requests_total{RATE}))", "{{code}}")],
            unit="reqps",
        ),
        Panel(
            "Gateway upstream latency (time to first byte)",
            _quantiles(
                "vllm_sleep_gateway_upstream_latency_seconds_bucket",
                "model",
                "{{model}}",
                0.5,
                0.99,
            ),
            unit="s",
        ),
        Panel(
            "Requests rejected by agents",
            [
                (
                    f"sum by (reason) (rate(vllm_sleep_agent_requests_rejected_total{RATE}))",
                    "{{reason}}",
                )
            ],
            unit="reqps",
        ),
        Panel(
            "Reconcile errors",
            [
                (
                    f"sum by (namespace, model) (rate(vllm_sleep_reconcile_errors_total{RATE}))",
                    "{{namespace}}/{{model}}",
                )
            ],
            unit="ops",
        ),
        Panel(
            "GPU pool evictions and swaps per second",
            [
                (f"sum by (pool) (rate(vllm_sleep_pool_evictions_total{RATE}))", "evict {{pool}}"),
                (f"sum by (pool) (rate(vllm_sleep_pool_swaps_total{RATE}))", "swap {{pool}}"),
                (
                    f"sum by (pool, kind) (rate(vllm_sleep_pool_plan_refusals_total{RATE}))",
                    "refused {{pool}} {{kind}}",
                ),
            ],
            unit="ops",
            description="A wake that needed room: neighbours put to sleep, and plans refused.",
        ),
        Panel(
            "GPU pool swap duration (p50, p95)",
            _quantiles(
                "vllm_sleep_pool_swap_duration_seconds_bucket", "pool", "{{pool}}", 0.5, 0.95
            ),
            unit="s",
            description="From the first eviction to the target replica awake.",
        ),
    ]
    # Two panels a row, in the order listed.
    panels = [_panel(i + 1, spec, x=12 * (i % 2), y=8 * (i // 2)) for i, spec in enumerate(specs)]
    return {
        "uid": DASHBOARD_UID,
        "title": "vLLM sleep operator",
        "description": "Models by state, sleeps and wakes, held requests, gateway latency.",
        "tags": ["vllm", "vllm-sleep"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                    "options": [],
                }
            ]
        },
        "panels": panels,
    }


def _alert(
    name: str, expr: str, for_: str, severity: str, summary: str, runbook: str
) -> dict[str, Any]:
    return {
        "alert": name,
        "expr": expr,
        "for": for_,
        "labels": {"severity": severity},
        "annotations": {
            "summary": summary,
            "description": f"{runbook} See docs/operations.md#{name.lower()}.",
        },
    }


def alerts() -> dict[str, Any]:
    """The PrometheusRule's spec; docs/operations.md says what to do about each alert."""
    return {
        "groups": [
            {
                "name": "vllm-sleep",
                "rules": [
                    _alert(
                        "VllmSleepModelFailed",
                        'max by (namespace, model) (vllm_sleep_models{phase="Failed"}) == 1',
                        "5m",
                        "critical",
                        "{{ $labels.namespace }}/{{ $labels.model }}: every replica failed",
                        "The model cannot serve: read its Degraded condition and Events.",
                    ),
                    _alert(
                        "VllmSleepEngineFailed",
                        'sum(vllm_sleep_agent_state{state="failed"}) > 0',
                        "5m",
                        "warning",
                        "{{ $value }} model engine(s) in state failed",
                        "An engine died or refused a transition: its pod restarts or is replaced.",
                    ),
                    _alert(
                        "VllmSleepWakeTimeouts",
                        f'sum by (outcome) (rate(vllm_sleep_gateway_hold_seconds_count{{outcome="timeout"}}{RATE})) > 0',
                        "10m",
                        "warning",
                        "Requests time out waiting for a model to wake",
                        "Wakes take longer than the wake timeout, or a wake never starts.",
                    ),
                    _alert(
                        "VllmSleepWakeErrors",
                        f'sum by (namespace, model) (rate(vllm_sleep_transitions_total{{transition="wake", outcome="error"}}{RATE})) > 0',
                        "10m",
                        "warning",
                        "{{ $labels.namespace }}/{{ $labels.model }}: wakes fail",
                        "The agent refused or failed a wake the operator asked for.",
                    ),
                    _alert(
                        "VllmSleepRequestsRejectedWhileWaking",
                        f"sum by (reason) (rate(vllm_sleep_agent_requests_rejected_total{RATE})) > 0"
                        f' or sum by (outcome) (rate(vllm_sleep_gateway_hold_seconds_count{{outcome="rejected"}}{RATE})) > 0',
                        "10m",
                        "warning",
                        "Requests are refused while a model wakes",
                        "Hold queues are full, or models were deleted or stopped waking on request.",
                    ),
                    _alert(
                        "VllmSleepReconcileErrors",
                        f"sum by (namespace, model) (rate(vllm_sleep_reconcile_errors_total{RATE})) > 0",
                        "15m",
                        "warning",
                        "{{ $labels.namespace }}/{{ $labels.model }}: reconcile keeps failing",
                        "The operator cannot bring the model to its spec.",
                    ),
                ],
            }
        ]
    }
