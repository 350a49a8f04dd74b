"""Stored Responses (`POST /v1/responses` with `store`): the gateway-wide `responses:` section
and a route's `responses:` override.

```yaml
responses:                 # gateway-wide; every key optional
  store: true              # false: keep no response, whatever the client asks
  retention_days: 30
  purge_interval_s: 3600
  save_timeout_s: 2.0
routes:
  support:
    targets: [a]
    responses: {store: false}   # this route keeps nothing, even when the client sends store: true
```

The client's `store` (the API's default is true) is honoured only where both the gateway and
the route allow storing; where they do not, nothing is kept and `previous_response_id` on that
route gets a 400.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ResponsesConfig(_Strict):
    """Stored Responses, kept in the ledger database so `previous_response_id` works on
    whichever deployment and replica answers the next turn. Stored content is never logged."""

    # Keep responses the client asks to store (the API's default). False keeps nothing, on
    # every route; responses already stored stay readable until they expire.
    store: bool = True
    # How long a stored response (and the conversation behind it) can be read or chained.
    retention_days: Annotated[int, Field(ge=1, le=3650)] = 30
    # How often each worker deletes expired responses (in bounded batches).
    purge_interval_s: Annotated[float, Field(gt=0)] = 3600.0
    # How long a request waits on the database to save, read or delete a stored response. A
    # save that takes longer is dropped (logged and counted); a read answers 503.
    save_timeout_s: Annotated[float, Field(gt=0, le=60)] = 2.0


class RouteResponses(_Strict):
    """A route's override of the gateway-wide `responses:` section."""

    # false: this route never stores a response, whatever the client sends. Unset: the
    # gateway-wide `responses.store` applies. true cannot store where the gateway says false.
    store: bool | None = None
