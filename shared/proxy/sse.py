"""Server-Sent Events codec for the proxy: an incremental parser and an encoder.

The parser follows the WHATWG "event stream interpretation" rules: lines end in CRLF, LF or CR (in any mix,
split anywhere across network reads); ``field: value`` with one optional space after the colon; several
``data`` lines joined with ``"\\n"``; a blank line dispatches; a block without ``data`` lines dispatches
nothing; an unterminated block at end of stream is discarded. It works on bytes and only decodes whole
lines, so a multi-byte UTF-8 character split across reads is never mangled.

The encoder emits whole events only (always ending in the blank line), so a writer that sends each returned
``bytes`` in one write never leaves a client holding half an event.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar, overload

__all__ = [
    "DONE",
    "SSEComment",
    "SSEEvent",
    "SSEParser",
    "encode_comment",
    "encode_event",
]

_LINE_END = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"

DONE = b"data: [DONE]\n\n"
"""OpenAI's end-of-stream marker, as bytes ready to write."""


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event. ``id`` is the id field of this event's own block (None if it had none)."""

    event: str | None
    data: str
    id: str | None = None
    retry: int | None = None

    def json(self) -> Any:
        """The data parsed as JSON (raises ``json.JSONDecodeError``, e.g. on OpenAI's ``[DONE]``)."""
        return json.loads(self.data)


@dataclass(frozen=True, slots=True)
class SSEComment:
    """A comment line (``: keep-alive``), surfaced only on request: it shows the peer is alive."""

    text: str


_Item = TypeVar("_Item", SSEEvent, SSEEvent | SSEComment)


class SSEParser(Generic[_Item]):
    """Feed raw bytes in any split; get back the events (and, if ``comments``, comments) completed so far.

    ``SSEParser()`` is typed to yield only ``SSEEvent``; ``SSEParser(comments=True)`` yields
    ``SSEEvent | SSEComment``.
    """

    __slots__ = (
        "_buf",
        "_comments",
        "_data",
        "_event",
        "_has_data",
        "_id",
        "_in_block",
        "_retry",
        "_skip_lf",
        "_started",
    )

    @overload
    def __init__(self: SSEParser[SSEEvent], *, comments: Literal[False] = False) -> None: ...
    @overload
    def __init__(self: SSEParser[SSEEvent | SSEComment], *, comments: Literal[True]) -> None: ...
    def __init__(self, *, comments: bool = False) -> None:
        self._comments = comments
        self._buf = b""
        self._skip_lf = False  # the previous read ended in CR: a LF starting the next read belongs to it
        self._started = False  # BOM stripping only applies to the very first bytes
        self._reset()

    def _reset(self) -> None:
        self._event: str | None = None
        self._data: list[str] = []
        self._has_data = False
        self._id: str | None = None
        self._retry: int | None = None
        self._in_block = False

    @property
    def has_partial(self) -> bool:
        """True while an unfinished line or event is held: at end of stream, the stream was cut."""
        return bool(self._buf) or self._in_block

    def feed(self, chunk: bytes) -> list[_Item]:
        """Consume ``chunk``; return what it completed, in order (comments only if asked for)."""
        if not chunk:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        buf = self._buf + chunk if self._buf else chunk
        if not self._started:
            if len(buf) < len(_BOM) and _BOM.startswith(buf):
                self._buf = buf  # could still be the start of a BOM
                return []
            self._started = True
            if buf.startswith(_BOM):
                buf = buf[len(_BOM) :]
        out: list[Any] = []
        if not self._in_block and buf[-2:] == b"\n\n" and b"\r" not in buf:
            self._buf = b""
            self._whole_events(buf, out)
            return out
        pos = 0
        for m in _LINE_END.finditer(buf):
            end = m.start()
            if m.group() == b"\r" and m.end() == len(buf):
                self._skip_lf = True
            self._line(buf[pos:end], out)
            pos = m.end()
        self._buf = buf[pos:]
        return out

    def _whole_events(self, buf: bytes, out: list[Any]) -> None:
        """Complete LF-only blocks, as providers send them: the common shapes without line-by-line work."""
        for block in buf[:-2].split(b"\n\n"):
            if block[:6] == b"data: " and b"\n" not in block:
                out.append(SSEEvent(None, block[6:].decode("utf-8", "replace")))
                continue
            if block[:7] == b"event: ":
                name, sep, data = block.partition(b"\ndata: ")
                if sep and b"\n" not in data and b"\n" not in name:
                    out.append(SSEEvent(name[7:].decode("utf-8", "replace"), data.decode("utf-8", "replace")))
                    continue
            for line in block.split(b"\n"):
                self._line(line, out)
            self._line(b"", out)

    def close(self) -> list[_Item]:
        """End of stream. Per the spec an unterminated event is discarded (``has_partial`` tells first)."""
        self._buf = b""
        self._reset()
        return []

    def _line(self, raw: bytes, out: list[Any]) -> None:
        if not raw:
            if self._has_data:
                data = "\n".join(self._data)
                out.append(SSEEvent(self._event, data, self._id, self._retry))
            self._reset()
            return
        line = raw.decode("utf-8", "replace")
        if line[0] == ":":
            if self._comments:
                text = line[1:]
                out.append(SSEComment(text[1:] if text.startswith(" ") else text))
            return
        self._in_block = True
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._has_data = True
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\x00" not in value:
                self._id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)
        # any other field name is ignored, as the spec requires


def _dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def encode_event(data: Any, event: str | None = None, *, id: str | None = None) -> bytes:
    """One complete SSE event. ``data`` that is not a ``str`` is sent as compact JSON; newlines in a ``str``
    become several ``data:`` lines (which a parser joins back with ``"\\n"``)."""
    text = data if isinstance(data, str) else _dumps(data)
    if event is None and id is None and "\n" not in text and "\r" not in text:
        return b"data: %b\n\n" % text.encode("utf-8")
    parts: list[str] = []
    if event is not None:
        _check_single_line(event, "event")
        parts.append(f"event: {event}\n")
    if id is not None:
        _check_single_line(id, "id")
        parts.append(f"id: {id}\n")
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    for line in lines:
        parts.append(f"data: {line}\n")
    parts.append("\n")
    return "".join(parts).encode("utf-8")


def encode_comment(text: str = "") -> bytes:
    """A comment block (``: text``): a keep-alive across long upstream gaps, ignored by every SSE client."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return ("".join(f": {line}\n" if line else ":\n" for line in lines) + "\n").encode("utf-8")


def _check_single_line(value: str, field: str) -> None:
    if "\n" in value or "\r" in value or (field == "id" and "\x00" in value):
        raise ValueError(f"SSE {field} must be a single line: {value!r}")
