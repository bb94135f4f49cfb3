"""The pure GPU-pool scheduler: placement, wake plans and their invariants (no I/O).

The operator builds a `Pool` snapshot from observed state, asks for a `Plan` (or gets a
`Refusal` with its reason), runs the plan's first step, observes, and asks again: plans are
re-derived after every step, never stored. docs/scheduler.md explains the model and the rules.
"""

from .demand import awake_wanted, plan_demand
from .invariants import violations
from .model import BUSY_STATES, Device, Engine, EngineState, Node, Pool
from .placement import Placement, place
from .plan import Plan, Refusal, RefusalKind, Sleep, Start, Step, Wake
from .status import device_states
from .transitions import apply
from .victims import eviction_blocker, eviction_key, sleep_level
from .wake import level_for_sleep, plan_wake

__all__ = [
    "BUSY_STATES",
    "Device",
    "Engine",
    "EngineState",
    "Node",
    "Placement",
    "Plan",
    "Pool",
    "Refusal",
    "RefusalKind",
    "Sleep",
    "Start",
    "Step",
    "Wake",
    "apply",
    "awake_wanted",
    "device_states",
    "eviction_blocker",
    "eviction_key",
    "level_for_sleep",
    "place",
    "plan_demand",
    "plan_wake",
    "sleep_level",
    "violations",
]
