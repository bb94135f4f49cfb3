"""The logging configuration the agent writes for vLLM: vLLM accepts it and logs into the file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vllm_sleep.agent import Agent, AgentConfig, AgentConfigError
from vllm_sleep.agent.vllm_logging import MAX_BYTES, write_logging_config
from vllm_sleep.vllm import parse_sleep_report

REPORT = "Sleep mode freed 34.12 GiB memory, 1.43 GiB memory is still in use."

# What vLLM does with VLLM_LOGGING_CONFIG_PATH (vllm/logger.py), in a process of its own:
# dictConfig of the JSON, then its workers log through the "vllm.*" loggers.
APPLY = """
import json, logging, logging.config, sys
logging.config.dictConfig(json.load(open(sys.argv[1])))
logging.getLogger("vllm.v1.worker.gpu_worker").info(sys.argv[2])
logging.getLogger("vllm.v1.worker.gpu_worker").debug("not at INFO")
"""


def test_vllm_applies_the_config_and_logs_the_report_to_console_and_file(tmp_path: Path) -> None:
    config, log_file = tmp_path / "run" / "logging.json", tmp_path / "run" / "vllm.log"
    write_logging_config(config, log_file)
    out = subprocess.run(
        [sys.executable, "-c", APPLY, str(config), REPORT],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert REPORT in out.stdout  # vLLM's console output (kubectl logs) stays
    text = log_file.read_text()
    report = parse_sleep_report(text)
    assert report is not None and report.lines == 1
    assert "not at INFO" not in text
    handler = json.loads(config.read_text())["handlers"]["vllm_sleep_file"]
    assert (handler["maxBytes"], handler["backupCount"]) == (MAX_BYTES, 1)  # bounded volume


def test_rewriting_replaces_the_file_whole(tmp_path: Path) -> None:
    config = tmp_path / "logging.json"
    config.write_text("{half")
    write_logging_config(config, tmp_path / "a.log")
    write_logging_config(config, tmp_path / "b.log")
    assert json.loads(config.read_text())["handlers"]["vllm_sleep_file"]["filename"] == str(
        tmp_path / "b.log"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["logging.json"]  # no temporary left


def test_the_config_needs_the_log_file_it_names() -> None:
    with pytest.raises(AgentConfigError, match="--vllm-log-file"):
        AgentConfig.from_cli(["--vllm-logging-config", "/x/logging.json"], {"VLLM_SLEEP_CONTROL_TOKEN": "t"})  # fmt: skip


async def test_the_agent_writes_the_config_before_it_listens(tmp_path: Path) -> None:
    config, log_file = tmp_path / "logging.json", tmp_path / "vllm.log"
    cfg = AgentConfig.from_cli(
        [
            "--listen-host=127.0.0.1",
            "--public-port=0",
            "--control-port=0",
            f"--vllm-logging-config={config}",
            f"--vllm-log-file={log_file}",
        ],
        {"VLLM_SLEEP_CONTROL_TOKEN": "t"},
    )
    agent = Agent(cfg)
    try:
        await agent.start()
        assert agent.control_port
        loaded = json.loads(config.read_text())
        assert loaded["handlers"]["vllm_sleep_file"]["filename"] == str(log_file)
    finally:
        await agent.stop()
