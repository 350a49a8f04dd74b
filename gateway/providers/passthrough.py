"""An upstream answer taken as bytes: the pass-through endpoints' side of the adapter.

Moderations, images, transcriptions, speech and rerank are forwarded as they are; only
`model` is rewritten (in the JSON body, or in the multipart form gateway/api/passthrough.py
re-encodes). Their answers are not always JSON — speech is audio, a transcription may be
text, SRT or VTT — so the adapter's `open_raw` (gateway/providers/openai_compat.py) hands
back this object once the status line is in: read it whole, or relay it chunk by chunk.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import aiohttp

from gateway.providers.base import CUT, TIMEOUT, UpstreamError

# Relayed audio goes out in pieces of at most this size (one client write each).
CHUNK = 64 * 1024


class RawResponse:
    """A 200 from an upstream whose body has not been read yet."""

    __slots__ = ("_deployment", "_resp", "content_type", "limits", "request_id")

    def __init__(
        self,
        deployment: str,
        resp: aiohttp.ClientResponse,
        request_id: str | None,
        limits: Mapping[str, str] | None,
    ) -> None:
        self._deployment = deployment
        self._resp = resp
        self.request_id = request_id
        self.limits = limits
        self.content_type: str = resp.headers.get("Content-Type", "application/octet-stream")

    async def read(self) -> bytes:
        """The whole body (JSON and text answers: small), then the connection is released."""
        try:
            return await self._resp.read()
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamError(TIMEOUT, f"{self._deployment} timed out mid-body") from None
        except aiohttp.ClientError:
            raise UpstreamError(CUT, f"{self._deployment} closed the connection mid-body") from None
        finally:
            self._resp.release()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; UpstreamError if it breaks or ends short of its
        Content-Length (aiohttp checks that)."""
        try:
            async for chunk in self._resp.content.iter_chunked(CHUNK):
                yield chunk
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamError(TIMEOUT, f"{self._deployment} went silent mid-body") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(
                CUT, f"{self._deployment} body broke: {type(exc).__name__}"
            ) from None

    async def close(self) -> None:
        self._resp.close()
