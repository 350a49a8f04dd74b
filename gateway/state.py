"""Everything a worker needs to serve requests, built once per loaded config."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import orjson

from gateway.auth import KeyStore
from gateway.config_schema import GatewayConfig
from gateway.providers.openai_compat import ProviderEndpoint
from gateway.service import Service
from gateway.settings import Settings
from routing.resolve import ModelIndex


@dataclass
class GatewayState:
    config: GatewayConfig
    index: ModelIndex
    keys: KeyStore
    service: Service
    models_body: bytes
    draining: bool = False
    started_at: float = field(default_factory=time.time)

    @property
    def max_body_bytes(self) -> int:
        return self.config.server.max_body_bytes


def build_keys(settings: Settings, config: GatewayConfig) -> KeyStore:
    keys = [(k.name, k.key) for k in config.api_keys()]
    if settings.master_key:
        keys.append(("master", settings.master_key))
    return KeyStore(keys, disabled=config.auth_disabled)


def build_state(settings: Settings, config: GatewayConfig) -> GatewayState:
    """Must run inside the event loop: the upstream session binds to it."""
    index = config.model_index()
    endpoints = {
        name: ProviderEndpoint(name, p.api_base, p.api_key, p.headers)
        for name, p in config.providers.items()
    }
    created = int(time.time())
    models = {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": created, "owned_by": "farebox"}
            for name in index.routable_names()
        ],
    }
    return GatewayState(
        config=config,
        index=index,
        keys=build_keys(settings, config),
        service=Service.from_providers(endpoints),
        models_body=orjson.dumps(models),
    )
