"""Provider simulator speaking the real OpenAI, Anthropic, Azure OpenAI, Gemini / Vertex AI
and Bedrock Converse wire formats.

Used by the gateway's tests, the demo and the load benchmark.  Per-request behaviour
(latency, token counts, faults) is chosen with a directive string; see
:mod:`simulator.behaviour` for the grammar and
:mod:`simulator.stats` for what ``GET /_stats`` reports.
"""

from .server import create_app, run

__all__ = ["create_app", "run"]
