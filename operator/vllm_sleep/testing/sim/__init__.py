"""The vLLM simulator: vLLM's HTTP surface and sleep-mode behaviour (docs/vllm.md), with
GPU memory shared by the engines on one simulated device, and a record of contract violations.

    host = EngineHost(time_scale=0.01)
    dev = host.device("node-0/gpu-0", total_bytes=80 * 2**30)
    engine = await host.start_engine(SimConfig.from_cli(argv, env), device=dev)
"""

from .clock import Clock
from .config import PROFILES, Profile, SimConfig, SimConfigError
from .engine import SimEngine
from .host import EngineHost
from .memory import GPUDevice, HostMemory, OutOfMemory
from .timing import Timings, default_timings
from .units import GiB, parse_bytes
from .violations import KINDS, Violation

__all__ = [
    "KINDS",
    "PROFILES",
    "Clock",
    "EngineHost",
    "GPUDevice",
    "GiB",
    "HostMemory",
    "OutOfMemory",
    "Profile",
    "SimConfig",
    "SimConfigError",
    "SimEngine",
    "Timings",
    "Violation",
    "default_timings",
    "parse_bytes",
]
