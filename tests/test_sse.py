"""The wire format: exact bytes out, and a WHATWG-conformant parse back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sse_gateway import events as model
from sse_gateway.transports import sse
from sse_gateway.transports.sse import Decoder, ServerSentEvent
from sse_gateway.transports.sse import ServerSentEvent as SSE


@pytest.mark.parametrize(("args", "expected"), [
    ((0, "start", {"stream_id": "abc", "model": "demo/echo"}),
     b'id: 0\nevent: start\ndata: {"stream_id": "abc", "model": "demo/echo"}\n\n'),
    ((1, "token", {"content": "Hel"}), b'id: 1\nevent: token\ndata: {"content": "Hel"}\n\n'),
    ((2, "token", {"content": "a\nb\r\nc"}),
     b'id: 2\nevent: token\ndata: {"content": "a\\nb\\r\\nc"}\n\n'),
    ((3, "token", {"content": "data: x\n\nid: 9"}),
     b'id: 3\nevent: token\ndata: {"content": "data: x\\n\\nid: 9"}\n\n'),
    ((4, "token", {"content": "h\u00e9\U0001f600"}),
     'id: 4\nevent: token\ndata: {"content": "h\u00e9\U0001f600"}\n\n'.encode()),
    ((5, "token", {"content": "\ud800"}), b'id: 5\nevent: token\ndata: {"content": "\\ud800"}\n\n'),
    ((6, "cancelled", {"reason": "deleted"}),
     b'id: 6\nevent: cancelled\ndata: {"reason": "deleted"}\n\n'),
])
def test_rendered_event_bytes(args: tuple[int, str, dict[str, str]], expected: bytes) -> None:
    assert sse.render(model.make(*args)) == expected


def test_retry_ping_and_comment_bytes() -> None:
    assert sse.encode_retry(2000) == b"retry: 2000\n"
    assert sse.PING == b": ping\n"
    assert sse.encode_comment("hi") == b": hi\n"
    with pytest.raises(ValueError):
        sse.encode_comment("a\nb")


@pytest.mark.parametrize(("stream", "events", "last_id", "retry"), [
    (b"data: a\n\n", [SSE("message", "a", None)], None, None),
    (b"data: a\r\n\r\n", [SSE("message", "a", None)], None, None),
    (b"data: a\r\rdata: b\r\r", [SSE("message", "a", None), SSE("message", "b", None)],
     None, None),
    (b"data: a\ndata: b\n\n", [SSE("message", "a\nb", None)], None, None),
    (b"data:a\n\n", [SSE("message", "a", None)], None, None),
    (b"data:  a\n\n", [SSE("message", " a", None)], None, None),
    (b"data\n\n", [SSE("message", "", None)], None, None),
    (b": comment\ndata: a\n\n", [SSE("message", "a", None)], None, None),
    (b"event: x\n\n", [], None, None),  # no data: nothing dispatched
    (b"event: x\n\ndata: y\n\n", [SSE("message", "y", None)], None, None),
    (b"id: 7\nevent: token\ndata: {}\n\n", [SSE("token", "{}", "7")], "7", None),
    (b"id: 1\ndata: a\n\ndata: b\n\n", [SSE("message", "a", "1"), SSE("message", "b", "1")],
     "1", None),
    (b"id: a\0b\ndata: a\n\n", [SSE("message", "a", None)], None, None),
    (b"retry: 1500\n\n", [], None, 1500),
    (b"retry: 15x\n\n", [], None, None),
    (b"\xef\xbb\xbfdata: bom\n\n", [SSE("message", "bom", None)], None, None),
    (b"data: unfinished", [], None, None),  # no blank line: never dispatched
    (b"foo: bar\ndata: a\n\n", [SSE("message", "a", None)], None, None),
])
def test_decoder_whatwg_cases(stream: bytes, events: list[ServerSentEvent], last_id: str | None,
                              retry: int | None) -> None:
    for chunking in (len(stream) or 1, 1, 3):
        decoder = Decoder()
        got = [e for i in range(0, len(stream), chunking)
               for e in decoder.feed(stream[i:i + chunking])]
        assert got == events, chunking
        assert decoder.last_event_id == last_id
        assert decoder.retry == retry


def test_decoder_counts_comments() -> None:
    decoder = Decoder()
    list(decoder.feed(b": ping\n\n: ping\n\nid: 1\ndata: x\n\n"))
    assert decoder.comments == ["ping", "ping"]


@given(texts=st.lists(st.text(), min_size=1, max_size=8), data=st.data())
def test_any_text_survives_encoding_and_any_chunking(texts: list[str], data: st.DataObject) -> None:
    stream = sse.encode_retry(2000) + sse.PING + b"".join(
        sse.render(model.token(i, text)) for i, text in enumerate(texts))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    decoder = Decoder()
    events = [event for piece in pieces for event in decoder.feed(piece)]
    assert [e.json()["content"] for e in events] == texts
    assert [e.id for e in events] == [str(i) for i in range(len(texts))]
    assert all(e.event == "token" for e in events)
    assert decoder.retry == 2000
