"""An httpx transport on aiohttp's connection pool: the ``httpx.AsyncClient`` API, aiohttp's speed.

Why: httpx's own pool (httpcore) spends about 600 µs of CPU per request and slows down as more requests
are in flight; aiohttp's does the same work several times faster (``bench/README.md``). Delivery keeps
httpx's client, its exceptions and its test seams; only the connection pool underneath changes.

aiohttp's errors become httpx's, so that callers classify them as they would any httpx error. Messages
carry the error's kind, never the request URL (a webhook URL is a secret).
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp
import httpx


class AiohttpTransport(httpx.AsyncBaseTransport):
    """One aiohttp ``ClientSession`` with at most ``max_connections`` connections, made on first use."""

    def __init__(self, max_connections: int, keepalive_expiry: float | None = 5.0) -> None:
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections, limit_per_host=0, keepalive_timeout=self._keepalive_expiry
        )
        # No cookies kept, no proxies from the environment, no automatic decompression or redirects.
        return aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False, auto_decompress=False
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._session is None:
            self._session = self._open()
        timeout = _timeout(request.extensions.get("timeout", {}))
        try:
            async with self._session.request(
                request.method,
                # httpx already turned a URL's user:password@ into an Authorization header; aiohttp refuses both
                str(request.url.copy_with(username=None, password=None)),
                headers=dict(request.headers),
                data=await request.aread() or None,
                allow_redirects=False,
                timeout=timeout,
            ) as response:
                body = await response.read()
                headers = list(response.raw_headers)
                status = response.status
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise httpx.ReadTimeout(f"no answer in time ({type(exc).__name__})", request=request) from exc
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(f"could not connect ({type(exc).__name__})", request=request) from exc
        except aiohttp.ClientPayloadError as exc:
            raise httpx.ReadError(f"the answer was cut short ({type(exc).__name__})", request=request) from exc
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            raise httpx.RemoteProtocolError(
                f"the connection was dropped ({type(exc).__name__})", request=request
            ) from exc
        except aiohttp.ClientError as exc:
            raise httpx.TransportError(f"the request failed ({type(exc).__name__})", request=request) from exc
        return httpx.Response(status, headers=headers, content=body, request=request)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _timeout(phases: Mapping[str, float | None]) -> aiohttp.ClientTimeout:
    """httpx's per-phase timeouts as aiohttp's: waiting for a connection, connecting, reading. (The whole
    exchange is bounded by the destination, whatever the transport.)"""
    return aiohttp.ClientTimeout(
        total=None, connect=phases.get("pool"), sock_connect=phases.get("connect"), sock_read=phases.get("read")
    )
