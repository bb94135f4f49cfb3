"""The pod agent: owns the model pod's public port and executes sleep/wake for the operator.

See docs/agent.md (user view) and docs/interfaces.md (the operator's control API).
"""

from ..api.agent_protocol import AgentState
from .agent import Agent
from .config import AgentConfig, AgentConfigError

__all__ = ["Agent", "AgentConfig", "AgentConfigError", "AgentState"]
