"""The Grafana dashboard and the Prometheus alerts shipped in the chart (charts/.../files/).

Every series they query is one the operator, the gateway or the agents export; a unit test reads
the names out of the expressions and checks each against the processes' metric registries.
No panel shows evictions: no component counts them yet (the operator records an Event instead).
"""

from __future__ import annotations

from typing import Any

DASHBOARD_UID = "vllm-sleep-overview"
RATE = "[5m]"
_DS = {"type": "prometheus", "uid": "${datasource}"}


def _panel(
    pid: int,
    title: str,
    targets: list[tuple[str, str]],
    *,
    x: int,
    y: int,
    unit: str = "short",
    kind: str = "timeseries",
    w: int = 12,
    h: int = 8,
    description: str = "",
) -> dict[str, Any]:
    return {
        "id": pid,
        "type": kind,
        "title": title,
        "description": description,
        "datasource": _DS,
        "gridPos": {"h": h, "w": w, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": _DS, "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(targets)
        ],
    }


def _quantile(q: float, bucket: str, by: str) -> str:
    return f"histogram_quantile({q}, sum by (le, {by}) (rate({bucket}{RATE})))"


def dashboard() -> dict[str, Any]:
    panels = [
        _panel(
            1,
            "Models by phase",
            [("sum by (phase) (vllm_sleep_models)", "{{phase}}")],
            x=0,
            y=0,
            description="ModelDeployments in each phase (operator).",
        ),
        _panel(
            2,
            "Engines by state",
            [("sum by (state) (vllm_sleep_agent_state)", "{{state}}")],
            x=12,
            y=0,
            description="Model pods' engines in each state, as their agents report it.",
        ),
        _panel(
            3,
            "Sleeps and wakes per second",
            [
                (
                    f"sum by (transition, outcome) (rate(vllm_sleep_transitions_total{RATE}))",
                    "{{transition}} {{outcome}}",
                )
            ],
            x=0,
            y=8,
            unit="ops",
        ),
        _panel(
            4,
            "Transition duration (p50, p95)",
            [
                (
                    _quantile(
                        0.5, "vllm_sleep_transition_duration_seconds_bucket", "transition, level"
                    ),
                    "p50 {{transition}} L{{level}}",
                ),
                (
                    _quantile(
                        0.95, "vllm_sleep_transition_duration_seconds_bucket", "transition, level"
                    ),
                    "p95 {{transition}} L{{level}}",
                ),
            ],
            x=12,
            y=8,
            unit="s",
        ),
        _panel(
            5,
            "Requests held for a wake",
            [
                ("sum by (model) (vllm_sleep_gateway_held_requests)", "gateway {{model}}"),
                ("sum(vllm_sleep_agent_requests_held)", "agents"),
            ],
            x=0,
            y=16,
        ),
        _panel(
            6,
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
            x=12,
            y=16,
            unit="s",
        ),
        _panel(
            7,
            "Gateway requests by status",
            [(f"sum by (code) (rate(vllm_sleep_gateway_requests_total{RATE}))", "{{code}}")],
            x=0,
            y=24,
            unit="reqps",
        ),
        _panel(
            8,
            "Gateway upstream latency (time to first byte)",
            [
                (
                    _quantile(0.5, "vllm_sleep_gateway_upstream_latency_seconds_bucket", "model"),
                    "p50 {{model}}",
                ),
                (
                    _quantile(0.99, "vllm_sleep_gateway_upstream_latency_seconds_bucket", "model"),
                    "p99 {{model}}",
                ),
            ],
            x=12,
            y=24,
            unit="s",
        ),
        _panel(
            9,
            "Requests rejected by agents",
            [
                (
                    f"sum by (reason) (rate(vllm_sleep_agent_requests_rejected_total{RATE}))",
                    "{{reason}}",
                )
            ],
            x=0,
            y=32,
            unit="reqps",
        ),
        _panel(
            10,
            "Reconcile errors",
            [
                (
                    f"sum by (namespace, model) (rate(vllm_sleep_reconcile_errors_total{RATE}))",
                    "{{namespace}}/{{model}}",
                )
            ],
            x=12,
            y=32,
            unit="ops",
        ),
        _panel(
            11,
            "GPU pool evictions and swaps per second",
            [
                (f"sum by (pool) (rate(vllm_sleep_pool_evictions_total{RATE}))", "evict {{pool}}"),
                (f"sum by (pool) (rate(vllm_sleep_pool_swaps_total{RATE}))", "swap {{pool}}"),
                (
                    f"sum by (pool, kind) (rate(vllm_sleep_pool_plan_refusals_total{RATE}))",
                    "refused {{pool}} {{kind}}",
                ),
            ],
            x=0,
            y=40,
            unit="ops",
            description="A wake that needed room: neighbours put to sleep, and plans refused.",
        ),
        _panel(
            12,
            "GPU pool swap duration (p50, p95)",
            [
                (
                    _quantile(0.5, "vllm_sleep_pool_swap_duration_seconds_bucket", "pool"),
                    "p50 {{pool}}",
                ),
                (
                    _quantile(0.95, "vllm_sleep_pool_swap_duration_seconds_bucket", "pool"),
                    "p95 {{pool}}",
                ),
            ],
            x=12,
            y=40,
            unit="s",
            description="From the first eviction to the target replica awake.",
        ),
    ]
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
