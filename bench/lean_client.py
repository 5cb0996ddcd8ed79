"""A small HTTP/1.1 client on asyncio streams: the proxy bench's measuring client.

On a 2-core box the bench's client, the fake provider and the proxy share the cores, so what the
client itself burns is taken from the proxy it measures. httpx's async client used 18-34 ms of CPU
per 50-chunk stream here, more than the proxy; this one posts a JSON body on a kept-alive
connection and hands back the body as it is read (chunked framing removed), one piece per read,
which is all the bench needs to time events. Not a general client: no TLS, redirects or trailers.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

__all__ = ["LeanClient", "LeanResponse"]


class LeanResponse:
    """Status and headers of a response whose body is read with :meth:`reads`."""

    def __init__(self, status: int, headers: dict[str, str]) -> None:
        self.status_code = status
        self.headers = headers


class LeanClient:
    """Keep-alive connections to one ``http://host:port``, as many as are in use at once.

    Parameters:
      base_url(str): Scheme, host and port; paths are given per request.
      timeout_s(float): Bound on each read.
    """

    def __init__(self, base_url: str, timeout_s: float = 30.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise ValueError(f"want http://host:port, got {base_url!r}")
        self.host, self.port = parts.hostname, parts.port
        self.timeout_s = timeout_s
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def stream(
        self, path: str, body: dict[str, Any], headers: dict[str, str]
    ) -> AsyncIterator[LeanResponse | bytes]:
        """Yield the response (status, headers), then each piece of its body as a read brings it."""
        payload = json.dumps(body).encode()
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        request = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n{head}\r\n"
        ).encode() + payload
        reader, writer, buf = await self._send(request)
        reusable = False
        try:
            while (end := buf.find(b"\r\n\r\n")) < 0:
                buf += await self._read(reader)
            lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
            del buf[: end + 4]
            status = int(lines[0].split(" ", 2)[1])
            fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
            yield LeanResponse(status, fields)
            if fields.get("transfer-encoding", "").lower() == "chunked":
                async for piece in self._chunked(reader, buf):
                    yield piece
            else:
                length = int(fields.get("content-length", "0"))
                while len(buf) < length:
                    buf += await self._read(reader)
                if length:
                    yield bytes(buf[:length])
            reusable = fields.get("connection", "").lower() != "close"
        finally:
            if reusable:
                self._idle.append((reader, writer))
            else:
                writer.close()

    async def _send(self, request: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytearray]:
        """Write ``request`` on a live connection and return it with the response's first bytes.

        A kept-alive connection the server has closed meanwhile (uvicorn, LiteLLM's server, closes
        them after 5 idle seconds) is dropped, and the request goes once more on a new connection
        on another connection when the server closed a reused one before answering (as browsers do).
        """
        while self._idle:
            reader, writer = self._idle.pop()
            if reader.at_eof() or writer.is_closing():
                writer.close()
                continue
            writer.write(request)
            try:
                return reader, writer, bytearray(await self._read(reader))
            except ConnectionError:
                writer.close()
        reader, writer = await self._connect()
        writer.write(request)
        return reader, writer, bytearray(await self._read(reader))

    async def _chunked(self, reader: asyncio.StreamReader, buf: bytearray) -> AsyncIterator[bytes]:
        out = bytearray()
        while True:
            line_end = buf.find(b"\r\n")
            if line_end >= 0:
                size = int(bytes(buf[:line_end]).split(b";", 1)[0], 16)
                if size == 0:
                    while len(buf) < line_end + 4:  # "0" CRLF CRLF: no trailers here
                        buf += await self._read(reader)
                    del buf[: line_end + 4]
                    if out:
                        yield bytes(out)
                    return
                start = line_end + 2
                if len(buf) >= start + size + 2:
                    out += buf[start : start + size]
                    del buf[: start + size + 2]
                    continue
            if out:  # everything this read completed, as one piece
                yield bytes(out)
                out.clear()
            buf += await self._read(reader)

    async def _read(self, reader: asyncio.StreamReader) -> bytes:
        data = await asyncio.wait_for(reader.read(65536), self.timeout_s)
        if not data:
            raise ConnectionError("the server closed the connection")
        return data

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return reader, writer

    async def aclose(self) -> None:
        while self._idle:
            _, writer = self._idle.pop()
            writer.close()
