"""The operator's own Kubernetes client keeps few apiserver connections (each TLS connection
holds a 256 KiB read buffer: the client's default of 100 was tens of MB at scale)."""

from __future__ import annotations

from vllm_sleep.controller.kube import API_CONNECTIONS, api_client


async def test_the_operators_client_keeps_at_most_api_connections() -> None:
    api = api_client()
    try:
        assert api.rest_client.pool_manager.connector.limit == API_CONNECTIONS < 100
    finally:
        await api.close()
