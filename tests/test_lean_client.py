"""The proxy bench's measuring client against the fake provider: same events as httpx, kept-alive."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from bench.lean_client import LeanClient, LeanResponse
from localstack.fake_provider import running_fake_provider
from shared.proxy.sse import SSEEvent, SSEParser

BODY = {
    "model": "gpt-4o-mini::chunks=12;interval_ms=5",
    "messages": [{"role": "user", "content": "hello there"}],
    "stream": True,
    "stream_options": {"include_usage": True},
}
HEADERS = {"Authorization": "Bearer sk-test"}


@pytest.fixture(scope="module")
def fake() -> Iterator[str]:
    with running_fake_provider(in_thread=True) as url:
        yield url


async def lean_events(client: LeanClient, body: dict[str, object]) -> tuple[int, list[SSEEvent], int]:
    parser, events, reads, status = SSEParser(), [], 0, 0
    async for piece in client.stream("/openai/v1/chat/completions", body, HEADERS):
        if isinstance(piece, LeanResponse):
            status = piece.status_code
        else:
            reads += 1
            events.extend(parser.feed(piece))
    return status, events, reads


def test_a_chunked_stream_reads_as_httpx_reads_it_on_one_kept_alive_connection(fake: str) -> None:
    with httpx.Client() as http:
        expected = SSEParser().feed(
            http.post(f"{fake}/openai/v1/chat/completions", json=BODY, headers=HEADERS).content
        )

    async def run() -> tuple[list[tuple[int, list[SSEEvent], int]], int]:
        client = LeanClient(fake)
        try:
            results = [await lean_events(client, BODY) for _ in range(3)]
            return results, len(client._idle)
        finally:
            await client.aclose()

    results, idle = asyncio.run(run())
    for status, events, reads in results:
        assert status == 200
        assert [e.data for e in events][-1] == "[DONE]"
        assert len(events) == len(expected)  # ids and timestamps differ per response, not the shape
        assert reads >= 12  # events 5 ms apart come read by read, not all at the end
    assert idle == 1  # the three requests went one after another over the same connection


def test_an_error_with_a_sized_body_is_read_whole(fake: str) -> None:
    async def run() -> tuple[int, bytes]:
        client = LeanClient(fake)
        try:
            status, body = 0, b""
            async for piece in client.stream(
                "/openai/v1/chat/completions", {**BODY, "model": "gpt-4o-mini::error=429"}, HEADERS
            ):
                if isinstance(piece, LeanResponse):
                    status = piece.status_code
                else:
                    body += piece
            return status, body
        finally:
            await client.aclose()

    status, body = asyncio.run(run())
    assert status == 429 and b'"error"' in body


@pytest.mark.parametrize("close_when", ["idle", "on_next_request"])
def test_a_kept_alive_connection_the_server_closed_is_replaced_and_the_request_still_answered(
    close_when: str,
) -> None:
    """uvicorn closes a connection idle for 5 s; the next request must not fail because of it."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
    connections: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(2)  # the body, "{}"
        writer.write(answer)
        await writer.drain()
        if close_when == "on_next_request":
            await reader.read(1)  # the next request starts: drop it unanswered
        writer.close()

    async def run() -> list[int]:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = LeanClient(f"http://127.0.0.1:{port}", timeout_s=5)
        statuses = []
        try:
            for _ in range(3):
                async for piece in client.stream("/", {}, {}):
                    if isinstance(piece, LeanResponse):
                        statuses.append(piece.status_code)
                await asyncio.sleep(0.05)  # the server's close reaches the client's idle connection
        finally:
            await client.aclose()
            server.close()
        return statuses

    assert asyncio.run(run()) == [200, 200, 200]
    assert len(connections) == 3  # each request after the first needed a new connection
