"""An httpx transport on aiohttp's connection pool: the ``httpx.AsyncClient`` API, aiohttp's speed.

Why: httpx's own pool (httpcore) spends about 600 µs of CPU per request and slows down as more requests
are in flight; aiohttp's does the same work several times faster (``bench/README.md``). Delivery keeps
httpx's client, its exceptions and its test seams; only the connection pool underneath changes.

aiohttp's errors become httpx's, so that callers classify them as they would any httpx error. Messages
carry the error's kind, never the request URL (a webhook URL is a secret).
"""

from __future__ import annotations

import errno
import socket
import ssl
from collections.abc import Callable, Mapping

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
            raise httpx.ConnectError(connect_cause(exc), request=request) from exc
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


def connect_cause(exc: BaseException) -> str:
    """Why a connection could not be made, in words and without the URL (DNS, refused, TLS, unreachable),
    from the first error in ``exc``'s chain that says: aiohttp's or httpx's own transport alike."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, aiohttp.ClientConnectorDNSError | socket.gaierror):
            return "the host name could not be resolved (DNS)"
        if isinstance(seen, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError | ssl.SSLError):
            return "the TLS handshake failed (certificate or protocol)"
        if isinstance(seen, aiohttp.ClientConnectorError):
            seen = seen.os_error
        if isinstance(seen, ConnectionRefusedError) or getattr(seen, "errno", None) == errno.ECONNREFUSED:
            return "the connection was refused (nothing listens on that port)"
        if getattr(seen, "errno", None) in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return "the host is unreachable (no route)"
        seen = seen.__cause__ or seen.__context__
    return "could not connect"


def _timeout(phases: Mapping[str, float | None]) -> aiohttp.ClientTimeout:
    """httpx's per-phase timeouts as aiohttp's: waiting for a connection, connecting, reading. (The whole
    exchange is bounded by the destination, whatever the transport.)"""
    return aiohttp.ClientTimeout(
        total=None, connect=phases.get("pool"), sock_connect=phases.get("connect"), sock_read=phases.get("read")
    )


# What makes a destination's client, given its connection cap (tests give their own).
ClientFactory = Callable[[int], httpx.AsyncClient]


def default_client(max_connections: int) -> httpx.AsyncClient:
    """httpx's client on aiohttp's connection pool (``AiohttpTransport``)."""
    return httpx.AsyncClient(transport=AiohttpTransport(max_connections), follow_redirects=False)
