"""The control token follows its Secret's mounted file, swapped the way the kubelet swaps it.

A Secret volume holds `..<timestamp>/token`, the symlink `..data` to that directory and the
symlink `token` -> `..data/token`; an update writes a new timestamped directory, points a new
symlink at it and renames that over `..data` (atomic), then removes the old directory.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from vllm_sleep.agent import Agent, AgentConfig

pytestmark = pytest.mark.contract


class SecretVolume:
    def __init__(self, root: Path, token: str) -> None:
        self.root = root
        self._serial = 0
        self._current = self._write(token)
        os.symlink(self._current.name, root / "..data")
        os.symlink("..data/token", root / "token")

    @property
    def token_file(self) -> str:
        return str(self.root / "token")

    def _write(self, token: str) -> Path:
        self._serial += 1
        folder = self.root / f"..2026_12_07_08_00_0{self._serial}.{self._serial}"
        folder.mkdir()
        (folder / "token").write_text(token)
        return folder

    def update(self, token: str) -> None:
        old, self._current = self._current, self._write(token)
        os.symlink(self._current.name, self.root / "..data_tmp")
        os.replace(self.root / "..data_tmp", self.root / "..data")
        (old / "token").unlink()
        old.rmdir()


@pytest.fixture
async def volume(tmp_path: Path) -> SecretVolume:
    return SecretVolume(tmp_path, "first-t0ken\n")


@pytest.fixture
async def agent(volume: SecretVolume) -> AsyncIterator[Agent]:
    argv = [
        "--token-file",
        volume.token_file,
        "--listen-host",
        "127.0.5.21",
        "--public-port",
        "0",
        "--control-port",
        "0",
        "--upstream",
        "http://127.0.5.22:9",  # no engine: the control port answers all the same
    ]
    async with Agent(AgentConfig.from_cli(argv, {})) as a:
        yield a


async def state(agent: Agent, token: str) -> int:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
        headers = {"Authorization": f"Bearer {token}"}
        return (await http.get(agent.control_url + "/state", headers=headers)).status_code


async def test_a_rotated_secret_file_replaces_the_token(agent: Agent, volume: SecretVolume) -> None:
    assert await state(agent, "first-t0ken") == 200
    volume.update("second-t0ken\n")
    assert await state(agent, "second-t0ken") == 200
    assert await state(agent, "first-t0ken") == 401  # the old token is revoked with the swap


async def test_an_empty_or_unreadable_update_keeps_the_current_token(
    agent: Agent, volume: SecretVolume
) -> None:
    volume.update("\n")
    assert await state(agent, "first-t0ken") == 200
    assert await state(agent, "x") == 401
    volume.update("third-t0ken")
    assert await state(agent, "third-t0ken") == 200
