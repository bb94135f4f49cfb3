"""The sleeping residual, measured per engine by its agent from vLLM's own sleep report.

The simulated vLLM writes its log where a `VLLM_LOGGING_CONFIG_PATH` dictConfig says (a
bounded RotatingFileHandler, as a model pod configures it); the agent reads what a sleep appended
and reports `freed_bytes` and `residual_bytes` in `/state`. A neighbour on the same device makes
the report's "still in use" figure device-wide: the residual must not include it.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from vllm_sleep.agent import Agent, AgentConfig
from vllm_sleep.testing.sim import EngineHost, GiB, SimEngine
from vllm_sleep.testing.sim.testkit import start

from .agent_wait import wait_state

pytestmark = pytest.mark.contract

TOKEN = "residual-s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROUNDING = 6 << 20  # the report has two decimals of GiB: ±5 MiB


def logging_config(tmp_path: Path, max_bytes: int = 4096) -> Path:
    """What a model pod mounts: vLLM's console handler plus a bounded file in the shared volume."""
    config = {
        "version": 1,
        "formatters": {"vllm": {"format": "%(levelname)s %(asctime)s %(message)s"}},
        "handlers": {
            "console": {"class": "logging.StreamHandler", "formatter": "vllm"},
            "file": {
                "class": "logging.handlers.RotatingFileHandler",
                "formatter": "vllm",
                "filename": str(tmp_path / "log" / "vllm.log"),
                "maxBytes": max_bytes,
                "backupCount": 1,
            },
        },
        "loggers": {"vllm": {"handlers": ["console", "file"], "level": "INFO"}},
    }
    path = tmp_path / "logging.json"
    path.write_text(json.dumps(config))
    return path


def agent_config(e: SimEngine, log_file: Path, engine_bytes: int | None) -> AgentConfig:
    return AgentConfig.model_validate(
        {
            "listen_host": "127.0.5.3",
            "public_port": 0,
            "control_port": 0,
            "upstream": e.url,
            "control_token": TOKEN,
            "poll_interval": 0.01,
            "health_interval": 0.05,
            "settle_time": 0.0,
            "vllm_log_file": log_file,
            "engine_memory_bytes": engine_bytes,
        }
    )


async def state(http: httpx.AsyncClient, agent: Agent) -> dict[str, object]:
    report: dict[str, object] = (await http.get(agent.control_url + "/state", headers=AUTH)).json()
    return report


@pytest.mark.parametrize("profile", ["0.34", "0.33", "legacy"])
async def test_the_agent_reports_the_engines_own_residual_next_to_an_awake_neighbour(
    host: EngineHost, http: httpx.AsyncClient, tmp_path: Path, profile: str
) -> None:
    gpu = host.device("node/gpu-0", 80 * GiB)
    env = {
        "VLLM_SIM_PROFILE": profile,
        "VLLM_LOGGING_CONFIG_PATH": str(logging_config(tmp_path)),
    }
    args = ("--enable-sleep-mode", "--gpu-memory-utilization", "0.4", "--residual-memory", "2Gi")
    e = await start(host, "m", *args, "--host", "127.0.4.10", device=gpu, env=env)
    neighbour = await start(
        host, "n", "--gpu-memory-utilization", "0.4", "--host", "127.0.4.11", device=gpu
    )
    log_file = tmp_path / "log" / "vllm.log"
    async with Agent(agent_config(e, log_file, e.share)) as agent:
        await wait_state(agent, "awake")
        assert (await state(http, agent))["residual_bytes"] is None  # nothing measured yet
        for _ in range(3):  # later sleeps measure again; the 4 KiB log rotates meanwhile
            assert (
                await http.post(agent.control_url + "/sleep?level=1", headers=AUTH)
            ).status_code == 200
            report = await state(http, agent)
            assert abs(int(str(report["residual_bytes"])) - 2 * GiB) <= ROUNDING
            assert abs(int(str(report["freed_bytes"])) - (e.share - 2 * GiB)) <= ROUNDING
            assert (await http.post(agent.control_url + "/wake", headers=AUTH)).status_code == 200
            with log_file.open("a") as f:
                # More than maxBytes: the handler rotates while writing the next sleep's line.
                f.write("INFO filler line to make the handler rotate\n" * 100)
    assert (
        "Sleep mode freed" in log_file.read_text() + (tmp_path / "log" / "vllm.log.1").read_text()
    )
    assert neighbour.state == "awake"  # its memory is in the report's "in use", not in ours
    assert log_file.stat().st_size <= 8192  # bounded by the handler, whatever the agent does


async def test_without_the_engines_footprint_only_freed_bytes_are_reported(
    host: EngineHost, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    env = {"VLLM_LOGGING_CONFIG_PATH": str(logging_config(tmp_path))}
    e = await start(host, "m", "--gpu-memory-utilization", "0.5", "--host", "127.0.4.12", env=env)
    async with Agent(agent_config(e, tmp_path / "log" / "vllm.log", None)) as agent:
        await wait_state(agent, "awake")
        assert (
            await http.post(agent.control_url + "/sleep?level=2", headers=AUTH)
        ).status_code == 200
        report = await state(http, agent)
        assert report["residual_bytes"] is None
        assert abs(int(str(report["freed_bytes"])) - (e.share - e.residual)) <= ROUNDING
