"""What the batch package needs of the gateway's live state, as a protocol: the runner is
handed the current `gateway.state.GatewayState` (which satisfies it) without importing the
module that builds it, which itself builds the batch store (gateway.state sits above
gateway.batch in the layers)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from gateway.batch.store import BatchStore
from gateway.config.schema import GatewayConfig
from gateway.core.live_routing import LiveRouting
from gateway.core.service import Service
from gateway.files.store import FileStore
from gateway.ledger.writer import LedgerWriter
from gateway.limits.limiter import Limiter
from routing.guard import Guards
from routing.resolve import ModelIndex


class BatchState(Protocol):
    @property
    def config(self) -> GatewayConfig: ...
    @property
    def index(self) -> ModelIndex: ...
    @property
    def service(self) -> Service: ...
    @property
    def batches(self) -> BatchStore | None: ...
    @property
    def files(self) -> FileStore | None: ...
    @property
    def live(self) -> LiveRouting | None: ...
    @property
    def limiter(self) -> Limiter | None: ...
    @property
    def writer(self) -> LedgerWriter | None: ...
    @property
    def guards(self) -> Mapping[str, Guards]: ...
