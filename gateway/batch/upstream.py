"""Path (a) of the batch tier: a deployment's provider runs the batch through its own Batch
API. This module picks the client for a deployment; the types it speaks are in
:mod:`gateway.batch.upstream_types` (re-exported here), the OpenAI-protocol client in
:mod:`gateway.batch.upstream_openai`.

A deployment has a provider batch API when its provider sets `batch_api: true`
(`DeploymentSpec.batch_api`); only the openai protocol can (litellm 1.106 reads Anthropic
message batches but cannot create one, so config refuses the flag elsewhere).
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp

from gateway.batch.upstream_openai import OpenAIBatches
from gateway.batch.upstream_types import (
    CANCELLED,
    EXPIRED,
    TERMINAL,
    ProviderBatches,
    UpstreamLine,
    UpstreamResult,
    UpstreamState,
)
from gateway.providers.openai_compat import ProviderEndpoint
from routing.model import DeploymentSpec

__all__ = [
    "CANCELLED",
    "EXPIRED",
    "TERMINAL",
    "ProviderBatches",
    "UpstreamLine",
    "UpstreamResult",
    "UpstreamState",
    "provider_batches",
]


def provider_batches(
    deployment: DeploymentSpec,
    session: aiohttp.ClientSession,
    endpoints: Mapping[str, ProviderEndpoint],
) -> ProviderBatches | None:
    """The Batch API client for `deployment`'s provider, or None when it has none.

    `endpoints` are the OpenAI-protocol providers by name, built as for live calls
    (`ProviderEndpoint(name, p.api_base, p.api_key, p.headers)`, see gateway.state), so a
    batch reaches the provider with exactly the live path's base URL, key and headers."""
    if not deployment.batch_api or deployment.protocol != "openai":
        return None
    endpoint = endpoints.get(deployment.provider)
    if endpoint is None:
        return None
    return OpenAIBatches(deployment, endpoint, session)
