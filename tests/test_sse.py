"""The SSE codec: the parser against the spec's line rules in any byte split, and the encoder through it."""

from __future__ import annotations

import json
import random

import pytest

from shared.proxy.sse import DONE, SSEComment, SSEEvent, SSEParser, encode_comment, encode_event


def parse_whole(raw: bytes, *, comments: bool = False) -> list[SSEEvent | SSEComment]:
    parser = SSEParser(comments=True) if comments else SSEParser()
    return list(parser.feed(raw))


def parse_split(raw: bytes, sizes: list[int], *, comments: bool = False) -> list[SSEEvent | SSEComment]:
    parser = SSEParser(comments=True) if comments else SSEParser()
    out: list[SSEEvent | SSEComment] = []
    pos = 0
    for size in sizes:
        out.extend(parser.feed(raw[pos : pos + size]))
        pos += size
    out.extend(parser.feed(raw[pos:]))
    return out


def byte_by_byte(raw: bytes, *, comments: bool = False) -> list[SSEEvent | SSEComment]:
    return parse_split(raw, [1] * len(raw), comments=comments)


GOLDEN: list[tuple[str, bytes, list[SSEEvent | SSEComment]]] = [
    ("one data line", b"data: hello\n\n", [SSEEvent(None, "hello")]),
    (
        "anthropic shape",
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
        [SSEEvent("message_stop", '{"type":"message_stop"}')],
    ),
    ("multi-line data joined with LF", b"data: a\ndata: b\ndata:\n\n", [SSEEvent(None, "a\nb\n")]),
    ("CRLF", b"event: x\r\ndata: 1\r\n\r\ndata: 2\r\n\r\n", [SSEEvent("x", "1"), SSEEvent(None, "2")]),
    ("lone CR", b"event: x\rdata: 1\r\rdata: 2\r\r", [SSEEvent("x", "1"), SSEEvent(None, "2")]),
    ("mixed endings", b"data: a\r\ndata: b\rdata: c\n\r\n", [SSEEvent(None, "a\nb\nc")]),
    ("only one leading space is stripped", b"data:  two\ndata:none\n\n", [SSEEvent(None, " two\nnone")]),
    ("field without colon", b"data\n\n", [SSEEvent(None, "")]),
    ("value keeps later colons", b"data: a: b\n\n", [SSEEvent(None, "a: b")]),
    ("comment skipped, does not end the event", b": keep-alive\ndata: x\n: more\n\n", [SSEEvent(None, "x")]),
    ("block without data dispatches nothing", b"event: ping\n\ndata: y\n\n", [SSEEvent(None, "y")]),
    (
        "event name is per event",
        b"event: a\ndata: 1\n\ndata: 2\n\n",
        [SSEEvent("a", "1"), SSEEvent(None, "2")],
    ),
    ("id and retry", b"id: 7\nretry: 1500\ndata: z\n\n", [SSEEvent(None, "z", "7", 1500)]),
    ("bad retry ignored, id with NUL ignored", b"id: a\x00b\nretry: 1x\ndata: z\n\n", [SSEEvent(None, "z")]),
    ("unknown field ignored", b"foo: bar\ndata: z\n\n", [SSEEvent(None, "z")]),
    ("BOM stripped once", b"\xef\xbb\xbfdata: a\n\n", [SSEEvent(None, "a")]),
    (
        "utf-8",
        "data: h\u00e9llo \u2603 \U0001f600\n\n".encode(),
        [SSEEvent(None, "h\u00e9llo \u2603 \U0001f600")],
    ),
    ("extra blank lines", b"\n\n\ndata: a\n\n\n\n", [SSEEvent(None, "a")]),
    ("openai done", b"data: [DONE]\n\n", [SSEEvent(None, "[DONE]")]),
    ("unterminated event is not emitted", b"data: a\n\ndata: half", [SSEEvent(None, "a")]),
]


@pytest.mark.parametrize(("name", "raw", "expected"), GOLDEN, ids=[g[0] for g in GOLDEN])
def test_golden_whole_and_byte_by_byte(name: str, raw: bytes, expected: list[SSEEvent]) -> None:
    assert parse_whole(raw) == expected
    assert byte_by_byte(raw) == expected


def test_whole_events_per_read_as_providers_send_them_parse_like_byte_by_byte() -> None:
    # one read per complete LF-only block is the parser's fast path; every shape must agree with the slow one
    for _, raw, _ in GOLDEN:
        if b"\r" in raw or not raw.endswith(b"\n\n"):
            continue
        blocks = [b + b"\n\n" for b in raw[:-2].split(b"\n\n")]
        for comments in (False, True):
            parser = SSEParser(comments=True) if comments else SSEParser()
            fed = [item for block in blocks for item in parser.feed(block)]
            assert fed == byte_by_byte(raw, comments=comments), raw


def test_comments_surfaced_in_order_when_asked() -> None:
    raw = b": keep-alive\ndata: x\n:no-space\n\n:\n\n"
    expected = [SSEComment("keep-alive"), SSEComment("no-space"), SSEEvent(None, "x"), SSEComment("")]
    assert parse_whole(raw, comments=True) == expected
    assert byte_by_byte(raw, comments=True) == expected
    assert parse_whole(raw) == [SSEEvent(None, "x")]


def _stream_corpus() -> bytes:
    parts = [b"\xef\xbb\xbf"]
    for i in range(30):
        eol = [b"\n", b"\r\n", b"\r"][i % 3]
        parts.append(b": ping" + eol)
        parts.append(b"event: e" + str(i).encode() + eol)
        parts.append(('data: {"t": "\u00e9\u2603\U0001f600 ' + str(i) + '"}').encode() + eol)
        if i % 4 == 0:
            parts.append(b"data: second line" + eol)
        parts.append(eol)
    return b"".join(parts)


def test_random_splits_equal_whole() -> None:
    raw = _stream_corpus()
    whole = parse_whole(raw, comments=True)
    assert len([e for e in whole if isinstance(e, SSEEvent)]) == 30
    assert byte_by_byte(raw, comments=True) == whole
    rng = random.Random(1234)
    for _ in range(200):
        sizes = [rng.randint(1, 40) for _ in range(rng.randint(1, 60))]
        assert parse_split(raw, sizes, comments=True) == whole


def test_cr_at_chunk_end_then_lf_is_one_line_break() -> None:
    # "data: a\r" | "\ndata: b\r\n\r\n": that LF completes a CRLF; it is no blank line ending the event
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\ndata: b\r\n\r\n") == [SSEEvent(None, "a\nb")]


def test_split_inside_multibyte_character() -> None:
    raw = "data: \u2603\n\n".encode()
    parser = SSEParser()
    assert parser.feed(raw[:7]) == []
    assert parser.feed(raw[7:]) == [SSEEvent(None, "\u2603")]


def test_events_are_returned_as_soon_as_complete() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: 1\n\ndata: 2\n") == [SSEEvent(None, "1")]
    assert parser.has_partial
    assert parser.feed(b"\n") == [SSEEvent(None, "2")]
    assert not parser.has_partial


def test_cut_stream_is_reported_and_discarded() -> None:
    parser = SSEParser()
    assert parser.feed(b'data: {"a": 1}\n\nevent: x\ndata: {"b"') == [SSEEvent(None, '{"a": 1}')]
    assert parser.has_partial
    assert parser.close() == []
    assert not parser.has_partial


def test_event_json() -> None:
    assert SSEEvent(None, '{"a": [1]}').json() == {"a": [1]}
    with pytest.raises(json.JSONDecodeError):
        SSEEvent(None, "[DONE]").json()


# ----------------------------------------------------------------------------------------------- encoder


@pytest.mark.parametrize(
    ("data", "event"),
    [
        ({"type": "message_stop"}, "message_stop"),
        ({"text": "line1\nline2", "u": "\u00e9\u2603\U0001f600"}, None),
        ("plain", None),
        ("multi\nline\r\ntext\rend", "e"),
        ("", None),
        ("[DONE]", None),
    ],
)
def test_encode_round_trips_through_parser(data: object, event: str | None) -> None:
    raw = encode_event(data, event)
    assert raw.endswith(b"\n\n")
    (parsed,) = parse_whole(raw)
    assert isinstance(parsed, SSEEvent)
    assert parsed.event == event
    if isinstance(data, str):
        assert parsed.data == data.replace("\r\n", "\n").replace("\r", "\n")
    else:
        assert parsed.json() == data


def test_encode_golden_bytes() -> None:
    assert encode_event({"type": "ping"}, "ping") == b'event: ping\ndata: {"type":"ping"}\n\n'
    assert encode_event({"a": "\u00e9"}) == 'data: {"a":"\u00e9"}\n\n'.encode()
    assert encode_event("x", id="3") == b"id: 3\ndata: x\n\n"
    assert DONE == b"data: [DONE]\n\n"
    assert encode_comment("keep-alive") == b": keep-alive\n\n"
    assert encode_comment() == b":\n\n"


def test_encode_rejects_multiline_event_name() -> None:
    with pytest.raises(ValueError):
        encode_event("x", "a\nb")
    with pytest.raises(ValueError):
        encode_event("x", id="1\r")


def test_comment_between_events_changes_nothing() -> None:
    raw = encode_event({"n": 1}) + encode_comment("keep-alive\nsecond") + encode_event({"n": 2}, "e")
    assert parse_whole(raw) == [SSEEvent(None, '{"n":1}'), SSEEvent("e", '{"n":2}')]
    assert parse_whole(raw, comments=True)[1:3] == [SSEComment("keep-alive"), SSEComment("second")]


def test_official_sdk_decoder_agrees() -> None:
    """The openai SDK's own SSE decoder reads what the encoder writes, in any split."""
    import openai._streaming as streaming

    raw = (
        encode_event({"a": 1})
        + encode_comment("keep-alive")
        + encode_event("two\nlines", "named")
        + encode_event("[DONE]")
    )
    chunks = [raw[i : i + 3] for i in range(0, len(raw), 3)]
    events = list(streaming.SSEDecoder().iter_bytes(iter(chunks)))
    assert [(e.event, e.data) for e in events] == [
        (None, '{"a":1}'),
        ("named", "two\nlines"),
        (None, "[DONE]"),
    ]
    ours = parse_whole(raw)
    assert [(e.event, e.data) for e in ours if isinstance(e, SSEEvent)] == [(e.event, e.data) for e in events]
