"""`vllm-sleep status | wake NAME | sleep NAME`: what a platform engineer types.

`wake` renews the model's demand Lease, exactly as the gateway does for a held request, so there
is one wake path. `sleep` stamps the annotation `vllm-sleep.io/sleep-request` on the
ModelDeployment (metadata, not spec: GitOps owns spec); the operator honours it unless newer
demand arrived.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from .api.demand import demand_lease, demand_lease_name, renew_patch, sleep_request_patch
from .api.model_deployment import ModelDeployment
from .api.model_status import ConditionType, ModelPhase
from .api.names import GPU_POOL_PLURAL, GROUP, MODEL_DEPLOYMENT_PLURAL, VERSION
from .api.quantity import Quantity
from .kubeconfig import NO_KUBECONFIG, KubeconfigError, check_kubeconfig, no_credentials
from .reconcile.lifecycle import demand_ignored, sleep_request_ignored
from .reconcile.policy import policy_from_spec


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vllm-sleep")
    sub = p.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("status", help="ModelDeployments and their state")
    st.add_argument("-n", "--namespace")
    st.add_argument("-A", "--all-namespaces", action="store_true")
    for name in ("wake", "sleep"):
        c = sub.add_parser(name)
        c.add_argument("model", help="ModelDeployment name")
        c.add_argument("-n", "--namespace", default=None)
        c.add_argument("--wait", action="store_true", help="wait until the model reaches the state")
        c.add_argument(
            "--timeout", type=float, default=300.0, help="seconds --wait waits (default 300)"
        )
    return p


def _clients() -> tuple[Any, Any, Any, str]:
    from kubernetes import client, config

    how = 'set KUBECONFIG (for the local cluster: eval "$(vllm-sleep dev env)")'
    if not check_kubeconfig(config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION):  # the file it reads
        raise no_credentials(NO_KUBECONFIG, how)
    try:
        config.load_kube_config()
        _, active = config.list_kube_config_contexts()
    except config.ConfigException as e:
        raise no_credentials(e, how) from e
    ns = active.get("context", {}).get("namespace", "default")
    api = client.ApiClient()
    return client.CustomObjectsApi(api), client.CoordinationV1Api(api), client, ns


def api_error(e: Any) -> str:
    """One line for an ApiException: the apiserver's own message (its Status body says what and
    which object), not the raw JSON."""
    try:
        message = json.loads(e.body).get("message")
    except (TypeError, ValueError, AttributeError):
        message = None
    return f"error: {message or f'{e.status} {e.reason}'}"


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        objs, coord, client, default_ns = _clients()
    except KubeconfigError as e:  # none, or one that is empty or not a kubeconfig
        print(f"error: {e}", file=sys.stderr)
        return 1
    ns = getattr(args, "namespace", None) or default_ns
    try:
        return _run(args, objs, coord, client, ns)
    except client.ApiException as e:
        print(api_error(e), file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, objs: Any, coord: Any, client: Any, ns: str) -> int:
    if args.cmd == "status":
        return _status(objs, None if args.all_namespaces else ns)
    mdep = objs.get_namespaced_custom_object(
        GROUP, VERSION, ns, MODEL_DEPLOYMENT_PLURAL, args.model
    )
    why_not = ignored(args.cmd, mdep)
    if why_not:
        print(f"error: {ns}/{args.model}: {why_not}", file=sys.stderr)
        return 1
    if args.cmd == "wake":
        renew_demand(coord, client, ns, mdep, holder=f"vllm-sleep-cli@{socket.gethostname()}")
        print(f"demand signalled for {ns}/{args.model}")
        return _wait(objs, ns, args.model, ModelPhase.AWAKE, args.timeout) if args.wait else 0
    objs.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        ns,
        MODEL_DEPLOYMENT_PLURAL,
        args.model,
        sleep_request_patch(datetime.now(UTC)),
    )
    print(f"sleep requested for {ns}/{args.model}")
    return _wait(objs, ns, args.model, ModelPhase.ASLEEP, args.timeout) if args.wait else 0


def ignored(cmd: str, mdep: dict[str, Any]) -> str | None:
    """Why the operator would ignore `cmd` ("wake" or "sleep") for this model, by its spec (the
    lifecycle's own rules); None when it would act on it."""
    try:
        policy = policy_from_spec(ModelDeployment.from_body(mdep).spec)
    except ValidationError:
        return None  # the operator reports what is wrong with it (its status)
    return sleep_request_ignored(policy) if cmd == "sleep" else demand_ignored(policy)


def renew_demand(
    coord: Any,
    client: Any,
    namespace: str,
    mdep: dict[str, Any],
    holder: str,
    now: datetime | None = None,
) -> None:
    """Renew the model's demand Lease (merge patch), creating it when missing."""
    name = mdep["metadata"]["name"]
    at = now or datetime.now(UTC)
    try:
        coord.patch_namespaced_lease(demand_lease_name(name), namespace, renew_patch(holder, at))
    except client.ApiException as e:
        if e.status != 404:
            raise
        body = demand_lease(
            name,
            namespace,
            mdep["metadata"].get("uid"),
            holder=holder,
            now=at,
            block_owner_deletion=False,
        )
        try:
            coord.create_namespaced_lease(namespace, body)
        except client.ApiException as e2:
            if e2.status != 409:  # created meanwhile (the operator, a gateway): renew it
                raise
            coord.patch_namespaced_lease(
                demand_lease_name(name), namespace, renew_patch(holder, at)
            )


def _wait(objs: Any, ns: str, name: str, phase: str, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        obj = objs.get_namespaced_custom_object(GROUP, VERSION, ns, MODEL_DEPLOYMENT_PLURAL, name)
        status = obj.get("status") or {}
        if status.get("phase") == phase:
            print(f"{ns}/{name} is {phase}")
            return 0
        if status.get("phase") == ModelPhase.FAILED:  # every replica failed: say why, not wait
            conditions = status.get("conditions") or []
            degraded: dict[str, Any] = next(
                (c for c in conditions if c.get("type") == ConditionType.DEGRADED), {}
            )
            why = degraded.get("message") or "see kubectl describe mdep"
            print(f"{ns}/{name} is Failed: {why}", file=sys.stderr)
            return 1
        time.sleep(0.5)
    print(f"timed out waiting for {ns}/{name} to be {phase}", file=sys.stderr)
    return 1


def _status(objs: Any, ns: str | None) -> int:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    if ns:
        items = objs.list_namespaced_custom_object(GROUP, VERSION, ns, MODEL_DEPLOYMENT_PLURAL)[
            "items"
        ]
    else:
        items = objs.list_cluster_custom_object(GROUP, VERSION, MODEL_DEPLOYMENT_PLURAL)["items"]
    rows = model_rows(items, datetime.now(UTC))
    table = Table(title="ModelDeployments", box=box.SIMPLE_HEAD, pad_edge=False)
    for i, col in enumerate(MODEL_COLUMNS):
        # Names (what a reader types next) and the state are never cut; the rest give way.
        whole = max([len(col), *(len(r[i]) for r in rows)]) if col in WHOLE else None
        table.add_column(col, no_wrap=True, min_width=whole)
    for row in rows:
        table.add_row(*row)
    console = Console()
    console.print(table)
    for line in problems(items):
        console.print(line, markup=False, highlight=False)
    try:
        pools = objs.list_cluster_custom_object(GROUP, VERSION, GPU_POOL_PLURAL)["items"]
    except Exception:  # GPUPools are cluster-scoped: a namespaced user may not list them
        pools = []
    device_list = device_rows(pools)
    if device_list:
        devices = Table(title="GPU devices", box=box.SIMPLE_HEAD, pad_edge=False)
        for col in ("POOL", "DEVICE", "MODELS", "AWAKE", "COMMITTED"):
            devices.add_column(col)
        for row in device_list:
            devices.add_row(*row)
        console.print(devices)
    return 0


WHOLE = ("NAMESPACE", "NAME", "STATE", "AWAKE")
MODEL_COLUMNS = (
    "NAMESPACE",
    "NAME",
    "MODEL",
    "STATE",
    "AWAKE",
    "POOL",
    "LAST-ACTIVITY",
    "LAST WAKE",
)


def age(ts: str | None, now: datetime) -> str:
    """An RFC 3339 time as kubectl shows ages ("45s", "12m", "3h", "2d"); "-" when unset."""
    if not ts:
        return "-"
    try:
        then = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return ts
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def model_rows(items: list[dict[str, Any]], now: datetime) -> list[tuple[str, ...]]:
    """One row per ModelDeployment, in MODEL_COLUMNS' order."""
    rows: list[tuple[str, ...]] = []
    for it in items:
        status = it.get("status") or {}
        wake = status.get("lastWakeSeconds")
        try:
            md = ModelDeployment.from_body(it)
            served, pool = md.served_model_name, md.spec.placement.pool or "-"
        except ValidationError as e:  # shown, not fatal: one bad object must not hide the rest
            served, pool = f"(invalid: {e.error_count()} errors)", "-"
        rows.append(
            (
                it["metadata"]["namespace"],
                it["metadata"]["name"],
                served,
                status.get("phase", "-"),
                status.get("awake", "-"),
                pool,
                age(status.get("lastActivityTime"), now),
                f"{wake:.2f}s" if isinstance(wake, int | float) else "-",
            )
        )
    return rows


def problems(items: list[dict[str, Any]]) -> list[str]:
    """ "ns/name: message" of each Degraded model: why a model is not serving, without a
    `kubectl describe` per model."""
    out = []
    for it in items:
        for c in (it.get("status") or {}).get("conditions") or []:
            if c.get("type") == ConditionType.DEGRADED and c.get("status") == "True":
                meta = it["metadata"]
                out.append(
                    f"{meta['namespace']}/{meta['name']}: {c.get('message') or c.get('reason')}"
                )
    return out


def device_rows(pools: list[dict[str, Any]]) -> list[tuple[str, str, str, str, str]]:
    """One row per device of every GPUPool's status: replicas placed, awake, memory committed."""
    rows = []
    for p in pools:
        spec, status = p.get("spec") or {}, p.get("status") or {}
        try:
            total = Quantity.parse(spec.get("deviceMemory", "0")).bytes()
        except ValueError:
            total = 0
        for d in status.get("deviceStates") or []:
            used = int(d.get("committedBytes") or 0)
            memory = f"{used / 2**30:.1f} / {total / 2**30:.0f} GiB" if total else f"{used} B"
            rows.append(
                (
                    p["metadata"]["name"],
                    str(d.get("device", "-")),
                    str(len(d.get("models") or [])),
                    ", ".join(d.get("awake") or []) or "-",
                    memory,
                )
            )
    return rows
