"""The Batch API's runner: the gateway-wide `batch:` section.

```yaml
batch:                          # every key optional
  serverless_concurrency: 4     # lines in flight at once on a paid serverless deployment
  fill_headroom: 0.1            # share of a GPU's max_concurrency kept free for live bursts
  fill_hold_s: 1.0              # live load counts at its peak of this long (gaps between requests)
  max_running: 2                # batches one replica runs at the same time
  poll_interval_s: 0.5          # how often an idle replica looks for batches to run
  provider_poll_interval_s: 10  # how often a provider's own batch is asked for its status
  lease_s: 30                   # a replica's hold on a batch, renewed while it runs
  default_max_tokens: 1024      # worst case per line, for the budget reserved at submission
```
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class BatchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # A batch on a paid deployment never needs to be fast: a few lines at a time keep it
    # out of the way of the route's live traffic and of the provider's rate limits.
    serverless_concurrency: Annotated[int, Field(ge=1, le=256)] = 4
    # Dedicated fill takes a slot only while in-flight live requests plus batch lines stay
    # below max_concurrency minus this share, so a live burst finds free slots at once.
    fill_headroom: Annotated[float, Field(ge=0, lt=1)] = 0.1
    # Live in-flight requests count at their highest of this window: a line started in the
    # gap between two live requests would hold, for its whole generation, the slot the next
    # one needs.
    fill_hold_s: Annotated[float, Field(ge=0, le=60)] = 1.0
    max_running: Annotated[int, Field(ge=1, le=64)] = 2
    poll_interval_s: Annotated[float, Field(gt=0, le=60)] = 0.5
    provider_poll_interval_s: Annotated[float, Field(gt=0, le=3600)] = 10.0
    lease_s: Annotated[float, Field(ge=2, le=3600)] = 30.0
    default_max_tokens: Annotated[int, Field(ge=1)] = 1024
