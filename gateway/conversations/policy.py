"""Whether a Responses request is stored: the client's `store`, within what the gateway-wide
`responses:` section and the route's `responses:` allow. Pure."""

from __future__ import annotations

from gateway.config.responses import ResponsesConfig, RouteResponses


def store_wanted(
    requested: bool | None,
    route: RouteResponses | None,
    gateway: ResponsesConfig,
    *,
    available: bool = True,
) -> bool:
    """Store this response? `requested`: the body's `store` (None when absent: the API's
    default, true). `available`: the gateway has a store (a database) at all. The operator's
    false (gateway or route) wins over the client's true; a route's true cannot override the
    gateway's false."""
    if not available or not gateway.store:
        return False
    if route is not None and route.store is False:
        return False
    return requested is not False
