"""What a simulated container "runs": a simulated vLLM engine, the real agent, or nothing.

The container's command line decides, as it would for a real runtime: `vllm serve ...` (or the
OpenAI api_server module, or `vllm-sleep sim`) becomes a simulated engine; `vllm-sleep agent ...`
runs this project's real agent code. Addresses in the arguments are localised to the pod
(127.0.0.1 inside the pod -> the pod's private twin address). Anything else fails the container
with a reason, the way an image without that binary would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from .ips import localize


class Process(Protocol):
    """A running container's main process, as the pod worker sees it."""

    async def stop(self) -> None: ...

    def exited(self) -> asyncio.Event: ...

    def failure(self) -> str | None: ...


class UnknownCommand(Exception):
    pass


@dataclass
class EngineProcess:
    engine: object  # vllm_sleep.testing.sim SimEngine

    async def stop(self) -> None:
        await self.engine.stop()  # type: ignore[attr-defined]

    def exited(self) -> asyncio.Event:
        ev: asyncio.Event = self.engine.dead  # type: ignore[attr-defined]
        return ev

    def failure(self) -> str | None:
        """What the engine's log would end with when it died (startup error, crash)."""
        text: str | None = getattr(self.engine, "failure", None)
        return text


@dataclass
class AgentProcess:
    agent: object  # vllm_sleep.agent Agent
    _exited: asyncio.Event

    async def stop(self) -> None:
        await self.agent.stop()  # type: ignore[attr-defined]
        self._exited.set()

    def exited(self) -> asyncio.Event:
        return self._exited

    def failure(self) -> str | None:
        return None


def command_line(container: Mapping[str, object]) -> list[str]:
    cmd = container.get("command") or []
    args = container.get("args") or []
    assert isinstance(cmd, list) and isinstance(args, list)
    return [str(x) for x in [*cmd, *args]]


def classify(argv: list[str]) -> tuple[str, list[str]]:
    """Return ("engine" | "agent", remaining args) or raise UnknownCommand."""
    words = [w.rsplit("/", 1)[-1] for w in argv[:4]]
    if words[:2] == ["vllm", "serve"]:
        return "engine", argv[2:]
    if words[:2] == ["vllm-sleep", "sim"]:
        return "engine", argv[2:]
    if (
        len(words) >= 3
        and words[0].startswith("python")
        and argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    ):
        return "engine", argv[3:]
    if words[:2] == ["vllm-sleep", "agent"]:
        return "agent", argv[2:]
    shown = " ".join(argv[:3]) or "(no command)"
    raise UnknownCommand(
        f"the simulated runtime can run `vllm serve`, `vllm-sleep sim` or `vllm-sleep agent`, "
        f"not `{shown}`; set the container's command explicitly"
    )


def localize_args(args: list[str], pod_ip: str) -> list[str]:
    """Rewrite --host/--listen-host values and URL hosts so pod-local means pod-local."""
    out: list[str] = []
    host_flags = {"--host", "--listen-host"}
    url_flags = {"--upstream"}
    i = 0
    while i < len(args):
        a = args[i]
        flag, eq, val = a.partition("=")
        if eq and flag in host_flags:
            out.append(f"{flag}={localize(val, pod_ip)}")
        elif eq and flag in url_flags:
            out.append(f"{flag}={_localize_url(val, pod_ip)}")
        elif a in host_flags and i + 1 < len(args):
            out += [a, localize(args[i + 1], pod_ip)]
            i += 1
        elif a in url_flags and i + 1 < len(args):
            out += [a, _localize_url(args[i + 1], pod_ip)]
            i += 1
        else:
            out.append(a)
        i += 1
    return out


def _localize_url(url: str, pod_ip: str) -> str:
    parts = urlsplit(url)
    host = localize(parts.hostname or "", pod_ip)
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


async def start_engine(
    host: Any,
    args: list[str],
    env: Mapping[str, str],
    pod_ip: str,
    device: object | None,
    memory_limit_bytes: int | None = None,
) -> EngineProcess:
    # vLLM's default --host is all interfaces; in a pod that includes the pod IP.
    if not any(a == "--host" or a.startswith("--host=") for a in args):
        args = [*args, "--host", "0.0.0.0"]
    from ..sim import SimConfig

    config = SimConfig.from_cli(localize_args(args, pod_ip), env)
    engine = await host.start_engine(config, device=device, memory_limit_bytes=memory_limit_bytes)
    return EngineProcess(engine)


# Every simulated pod's agent runs in this one process, and an idle agent's /health polls of its
# engine are most of that process's idle CPU at a thousand pods. This variable (seconds), when
# set, replaces the agents' --health-interval (their poll while the engine is up; a crash is
# noticed that much later). The scale bench sets it; unset, agents run as their pods say.
AGENT_HEALTH_INTERVAL_ENV = "VLLM_SLEEP_SIM_AGENT_HEALTH_INTERVAL"


def agent_args(args: list[str], environ: Mapping[str, str]) -> list[str]:
    """The agent's command line as this runtime runs it (see AGENT_HEALTH_INTERVAL_ENV)."""
    stretched = environ.get(AGENT_HEALTH_INTERVAL_ENV)
    return [*args, f"--health-interval={float(stretched)}"] if stretched else args


async def start_agent(args: list[str], env: Mapping[str, str], pod_ip: str) -> AgentProcess:
    from ...agent import Agent, AgentConfig

    args = agent_args(args, os.environ)

    if not any(a == "--listen-host" or a.startswith("--listen-host=") for a in args):
        args = [*args, "--listen-host", "0.0.0.0"]
    config = AgentConfig.from_cli(localize_args(args, pod_ip), dict(env))
    agent = Agent(config)
    await agent.start()
    return AgentProcess(agent, asyncio.Event())


async def stop_quietly(proc: Process | None) -> None:
    if proc is not None:
        with contextlib.suppress(Exception):
            await proc.stop()
