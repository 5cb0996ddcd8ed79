"""A Chalice response whose body is written as it is produced (server-sent events).

Stock Chalice buffers every body (its open request for streaming is aws/chalice#2078).  Under
Pressline's local server (``python -m functions.serve``, what ``make run`` starts) each chunk goes
to the client when it is yielded.  Where a platform cannot stream (Chalice's test client, a
buffered API Gateway or Lambda integration) ``to_dict`` joins the chunks: the same events, all at
the end.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from chalice import Response

#: Set by the local streaming server at start; everywhere else bodies are buffered.
_incremental = False


def enable_incremental() -> None:
    """Called by ``functions.serve``: the handler there writes iterator bodies chunk by chunk."""
    global _incremental
    _incremental = True


class StreamingResponse(Response):
    """A response with an iterator of ``bytes`` chunks as its body.

    ``close()`` on the iterator (a client that went away) must release its upstream request.
    """

    def __init__(
        self, chunks: Iterator[bytes], status_code: int = 200, headers: dict[str, str] | None = None
    ):
        super().__init__(body=b"", status_code=status_code, headers=dict(headers or {}))
        self.chunks = chunks

    def to_dict(self, binary_types: list[str] | None = None) -> dict[str, Any]:
        if not _incremental:
            self.body = b"".join(self.chunks).decode()
            return super().to_dict(binary_types)
        single, multi = self._sort_headers(self.headers)
        return {
            "headers": single,
            "multiValueHeaders": multi,
            "statusCode": self.status_code,
            "body": self.chunks,
        }
