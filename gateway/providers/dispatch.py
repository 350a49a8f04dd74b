"""One adapter per protocol behind the single Adapter interface the service calls."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.providers.base import Adapter, UpstreamReply, UpstreamStream
from routing.model import DeploymentSpec, Timeouts


class ProtocolDispatch:
    """Sends each deployment to the adapter serving its provider.

    Only built when the config mixes protocols; an all-OpenAI config hands the service
    the OpenAI adapter itself, so the common path pays nothing for this indirection.
    """

    def __init__(self, default: Adapter, by_provider: Mapping[str, Adapter]) -> None:
        self._default = default
        self._by_provider = dict(by_provider)
        self._adapters = [default, *{id(a): a for a in by_provider.values()}.values()]

    def _for(self, deployment: DeploymentSpec) -> Adapter:
        return self._by_provider.get(deployment.provider, self._default)

    def supports(self, deployment: DeploymentSpec, endpoint: str) -> bool:
        return self._for(deployment).supports(deployment, endpoint)

    async def call(
        self, deployment: DeploymentSpec, endpoint: str, payload: dict[str, Any], timeouts: Timeouts
    ) -> UpstreamReply:
        return await self._for(deployment).call(deployment, endpoint, payload, timeouts)

    async def open_stream(
        self, deployment: DeploymentSpec, endpoint: str, payload: dict[str, Any], timeouts: Timeouts
    ) -> UpstreamStream:
        return await self._for(deployment).open_stream(deployment, endpoint, payload, timeouts)

    async def close(self) -> None:
        for adapter in self._adapters:
            await adapter.close()
