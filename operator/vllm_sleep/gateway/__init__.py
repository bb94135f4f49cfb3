"""The OpenAI-compatible gateway: routes by `model`, holds requests while a model wakes."""

from .config import GatewayConfig
from .demand import DemandSignal, MemoryDemand
from .gateway import Gateway
from .sources import BackendSink, BackendSource, StaticSource

__all__ = [
    "BackendSink",
    "BackendSource",
    "DemandSignal",
    "Gateway",
    "GatewayConfig",
    "MemoryDemand",
    "StaticSource",
]
