"""The transport under delivery's httpx client: answers as httpx gives them, failures as httpx's errors."""

import asyncio
import socket

import httpx
import pytest

from sync.destinations.transport import AiohttpTransport
from sync.dev.receiver import Receiver

SECRET = "/webhook/s3cr3t-token"


async def post(url: str, timeout: float = 2.0, body: bytes = b'{"type":"Send Contact"}') -> httpx.Response:
    async with httpx.AsyncClient(transport=AiohttpTransport(4)) as client:
        return await client.post(url, content=body, headers={"Content-Type": "application/json"}, timeout=timeout)


def test_an_answer_comes_back_with_its_status_headers_and_body(faulty_receiver: Receiver) -> None:
    assert asyncio.run(post(faulty_receiver.url)).status_code == 200
    faulty_receiver.faults.respond = lambda body: (429, {"Retry-After": "7"})
    busy = asyncio.run(post(faulty_receiver.url))
    assert busy.status_code == 429 and busy.headers["Retry-After"] == "7"
    assert [r.body for r in faulty_receiver.records] == [{"type": "Send Contact"}] * 2


def test_a_slow_answer_is_a_read_timeout(faulty_receiver: Receiver) -> None:
    faulty_receiver.faults.delay = 1.0
    with pytest.raises(httpx.ReadTimeout) as caught:
        asyncio.run(post(faulty_receiver.url, timeout=0.2))
    assert SECRET not in str(caught.value)


def test_a_dropped_connection_is_a_transport_error(faulty_receiver: Receiver) -> None:
    faulty_receiver.faults.drop_rate = 1.0
    with pytest.raises(httpx.TransportError) as caught:
        asyncio.run(post(faulty_receiver.url))
    assert "webhook" not in str(caught.value)


def test_a_refused_connection_is_a_connect_error_without_the_url() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(httpx.ConnectError) as caught:
        asyncio.run(post(f"http://127.0.0.1:{port}{SECRET}"))
    assert SECRET not in str(caught.value) and "s3cr3t" not in repr(caught.value)
