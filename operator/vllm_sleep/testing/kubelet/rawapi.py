"""Kubernetes API calls whose answers are read as JSON, or not at all.

The generated client builds a model object from every answer (a V1Pod, a V1Node, a V1Lease, with
every date parsed by dateutil): for a thousand simulated pods' status writes and two hundred
nodes' heartbeats that was more of this process's CPU than the requests themselves. Call the
client method with `_preload_content=False` and pass the awaitable here.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from ...controller.kube import json_answer, unless_absent


async def send(call: Awaitable[Any], absent_ok: bool = False) -> bool:
    """Send and check the status; the body is not read (a written pod's answer is the whole
    pod). False: 404 with `absent_ok`."""
    resp = await call
    async with resp:
        if absent_ok and resp.status == 404:
            return False
        if not 200 <= resp.status <= 299:
            raise ApiException(status=resp.status, reason=await resp.text())
        return True


async def read(call: Awaitable[Any], absent_ok: bool = False) -> Any:
    """The answer's JSON (the operator's reader, `controller.kube.json_answer`); None for 404
    with `absent_ok`."""
    answer = json_answer(call)
    return await (unless_absent(answer) if absent_ok else answer)


async def watch_events(call: Awaitable[Any]) -> AsyncIterator[dict[str, Any]]:
    """The events of a watch (one JSON object a line), as dicts."""
    resp = await call
    async with resp:
        if resp.status != 200:
            raise ApiException(status=resp.status, reason=await resp.text())
        buffer = b""
        async for chunk in resp.content.iter_any():
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.strip():
                    yield json.loads(line)
        if buffer.strip():
            yield json.loads(buffer)
