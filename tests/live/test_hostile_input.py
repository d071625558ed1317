"""Hostile input against one real gateway: every answer is documented, nothing leaks, it keeps serving.

A property-based test (hypothesis) sends malformed and hostile bodies and
headers to ``POST /v1/streams`` of ONE gunicorn (gevent worker) with API keys
and a 4 KiB body limit. Bytes go out unmodified (``http.client`` with
``putheader``). For every answer:

* the status is one the README documents for this route;
* a refusal is ``application/json`` ``{"error": {"code", "message"[, "param"]}}``
  with the code that belongs to its status, and no traceback, path or key;
* ``401`` only without exactly the right key, and never with it;
* where the outcome follows from the input alone (a wrong key, a known non-JSON
  Content-Type, a body over the limit, bytes that are not a JSON object, a body
  built to be valid), it is the one expected;
* a ``200`` is ``text/event-stream; charset=utf-8``, read to its end, and ends
  with exactly one terminal event (``done``, ``error`` or ``cancelled``).

Every few examples, and at the end, ``/healthz`` answers and the server log
holds no traceback.

Header values here stay within what HTTP allows (no control characters, fields
under gunicorn's 8190-byte limit): those are refused by gunicorn itself, before
the app, which ``test_requests_refused_before_the_app_get_json_errors`` covers.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import itertools
import json
import re
import socket
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sse_gateway.providers.demo import split_words
from sse_gateway.transports.sse import Decoder, ServerSentEvent
from tests.conftest import record
from tests.fake_provider import FakeProvider
from tests.live.conftest import gateway_env
from tests.live.gateway import ROOT, GatewayServer

KEY = "sk-fuzz-key-1"
RIGHT_AUTH = f"Bearer {KEY}"
MAX_BODY = 4096  # MAX_CONTENT_LENGTH of the server under test
STREAM_ID = re.compile(r"[A-Za-z0-9_-]{16,128}")
URL_SAFE = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"

# The statuses POST /v1/streams may answer, and the codes documented for each.
CODES = {
    400: {"invalid_request", "unknown_model"},
    401: {"unauthorized"},
    409: {"stream_exists"},
    413: {"payload_too_large"},
    415: {"unsupported_media_type"},
    429: {"rate_limited", "too_many_streams"},
    503: {"overloaded"},
}
ALLOWED = {200, *CODES}
TERMINAL = {"done", "error", "cancelled"}
# Never in an answer unless the request itself carried it (an echoed model name).
FORBIDDEN = ("Traceback", 'File "', str(ROOT), KEY, "sk-test-openai", "sk-ant-test")
HEALTH_EVERY = 25  # examples between two liveness checks


@pytest.fixture(scope="module")
def server(fake: FakeProvider) -> Iterator[GatewayServer]:
    gateway = GatewayServer(gateway_env(fake, API_KEYS=KEY, MAX_CONTENT_LENGTH=str(MAX_BODY)),
                            label="hostile")
    try:
        yield gateway.start()
    finally:
        gateway.stop()


# --------------------------------------------------------------------------- strategies


@dataclass(frozen=True)
class Body:
    raw: bytes
    kind: str
    # Set only for a body built to be valid: the text demo/echo must answer
    # ("" when nothing is echoed), or None for a valid body whose text is not checked.
    echo: str | None = None
    valid: bool = False


@dataclass(frozen=True)
class Case:
    body: Body
    content_type: bytes | None
    authorization: bytes | None
    stream_id: bytes | None


# Header text: what HTTP allows in a field value (VCHAR, SP, HTAB, obs-text).
header_char = st.one_of(st.characters(min_codepoint=0x20, max_codepoint=0x7E),
                        st.characters(min_codepoint=0x80, max_codepoint=0xFF), st.just("\t"))
header_text = st.text(header_char, max_size=60)
# Unicode (no control characters, no surrogates) sent as its UTF-8 bytes: all >= 0x80.
unicode_text = st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=30)
unicode_bytes = unicode_text.map(lambda s: s.encode("utf-8"))


def latin1(value: str) -> bytes:
    return value.encode("latin-1")


def weighted(*options: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, each drawn with its weight."""
    return st.sampled_from([s for weight, s in options for _ in range(weight)]).flatmap(
        lambda strategy: strategy)


JSON_TYPES = [b"application/json", b"application/json; charset=utf-8",
              b"application/json;charset=UTF-8", b"Application/JSON",
              b"application/json ; profile=x", b"application/json;"]
OTHER_TYPES = [None, b"text/plain", b"text/json", b"application/jsonx", b"application/xml",
               b"application/x-www-form-urlencoded", b"multipart/form-data; boundary=xyz",
               b"application/octet-stream", b"json"]
content_types = weighted(
    (7, st.sampled_from(JSON_TYPES)),
    (2, st.sampled_from(OTHER_TYPES)),
    (1, st.one_of(header_text.map(latin1), unicode_bytes,
                  st.sampled_from([b"", b";;", b"application/json, text/plain", b"application/*",
                                   b"application/json\tcharset=utf-8", b"*/*"]))),
)

wrong_authorizations = st.one_of(
    st.none(),
    st.sampled_from([f"bearer {KEY}", f"BEARER {KEY}", f"Bearer  {KEY}", f"Token {KEY}", KEY,
                     f"Bearer {KEY}0", f"Bearer {KEY}x", f"Bearer x{KEY}", "Bearer sk-fuzz-key-2",
                     "Bearer", "Bearer ", "Basic " + base64.b64encode(f"{KEY}:".encode()).decode(),
                     f"Basic {KEY}", f"Bearer {KEY.upper()}", f"Bearer {KEY[:-1]}"]).map(latin1),
    header_text.map(lambda s: latin1("Bearer " + s)), header_text.map(latin1),
    unicode_bytes.map(lambda b: b"Bearer " + b),
    # Huge, but under gunicorn's 8190-byte field limit (beyond it: see the last test).
    st.integers(1000, 7000).map(lambda n: b"Bearer " + b"A" * n),
    st.integers(1000, 7000).map(lambda n: b"Bearer " + latin1(KEY) + b"A" * n),
)
# Mostly the right key (trailing blanks are stripped by gunicorn), so bodies get checked.
authorizations = weighted(
    (7, st.sampled_from([latin1(RIGHT_AUTH), latin1(RIGHT_AUTH + " ")])),
    (3, wrong_authorizations),
)

junk_stream_ids = st.one_of(
    st.text(URL_SAFE, min_size=1, max_size=15).map(latin1),  # too short
    st.text(URL_SAFE, min_size=129, max_size=400).map(latin1),  # too long
    header_text.filter(lambda s: any(c not in URL_SAFE for c in s.strip(" \t"))).map(latin1),
    unicode_bytes,
    st.text(URL_SAFE, min_size=16, max_size=40).map(lambda s: latin1(s[:8] + "/" + s[8:])),
    st.just(b""),
)
stream_ids = weighted(
    (3, st.none()),
    (2, st.text(URL_SAFE, min_size=16, max_size=128).map(latin1)),
    (3, junk_stream_ids),
)

# Field values: short texts (demo/echo streams every word, 10 ms apart).
# Lone surrogates too: JSON escapes them (\\udXXX) and the gateway must echo them back.
any_char = st.characters(exclude_categories=())
short_text = st.one_of(st.text(max_size=40), st.text(any_char, max_size=40))
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                         st.text(max_size=20))
json_values = st.recursive(json_scalars,
                           lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                   st.dictionaries(st.text(max_size=8), inner,
                                                                   max_size=4)),
                           max_leaves=12)
not_a_string = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                         st.lists(st.text(max_size=5), max_size=3), st.just({}))
hostile_models = st.one_of(
    st.sampled_from(["demo/echo", "demo/lorem"]),
    st.sampled_from(["demo", "demo/", "/echo", "/", "demo//echo", "demo/echo/", "DEMO/ECHO",
                     "demo/echo ", " demo/echo", "demo/*", "openai/*", "nope/x", "anthropic/",
                     "demo/echo\u0000", "demo/ech\u00f6", "demo/\u202eohce", "x" * 257,
                     "demo/" + "e" * 300, "../../etc/passwd", "demo/echo?x=1", "demo\\echo"]),
    st.text(max_size=300),
    st.text(max_size=40).map(lambda s: "demo/" + s),
    # The fake provider answers 404 for a model it has no scenario for: a short stream
    # ending in `error`. Its own scenarios ("fake-N") may stall: never name one.
    st.text(max_size=40).filter(lambda s: not s.startswith("fake-"))
    .flatmap(lambda s: st.sampled_from(["openai/", "anthropic/"]).map(lambda p: p + s)),
    not_a_string,
)
roles = st.one_of(st.sampled_from(["user", "system", "assistant"]),
                  st.sampled_from(["User", "tool", "function", "", "developer", "user "]),
                  short_text, not_a_string)
hostile_messages = st.one_of(
    st.lists(st.fixed_dictionaries({"role": roles, "content": st.one_of(short_text, not_a_string)},
                                   optional={"name": short_text, "extra": json_values}),
             max_size=5),
    st.lists(st.one_of(short_text, not_a_string, st.fixed_dictionaries({"role": roles})),
             max_size=4),
    st.just([]),
    short_text, not_a_string,
)
hostile_max_tokens = st.one_of(st.integers(1, 20), st.integers(max_value=0),
                               st.integers(min_value=32769), st.just(2 ** 64), st.just(10 ** 40),
                               st.booleans(), st.floats(allow_nan=False), st.text(max_size=6),
                               st.none())
hostile_temperature = st.one_of(st.floats(0, 2), st.floats(allow_nan=False), st.booleans(),
                                st.integers(-5, 5), st.text(max_size=6), st.none())
hostile_grace = st.one_of(st.floats(0, 300), st.floats(max_value=-1e-9, allow_nan=False),
                          st.floats(min_value=300.0001, allow_nan=False), st.just(1e308),
                          st.integers(-(10 ** 20), 10 ** 20), st.booleans(), st.text(max_size=6),
                          st.none())
hostile_fallbacks = st.one_of(
    st.lists(st.one_of(hostile_models, not_a_string), max_size=4), st.just([]),
    st.sampled_from([["demo/echo"], ["demo/lorem", "demo/echo"], ["openai/"], ["x"], [""]]),
    short_text, not_a_string)
extra_fields = st.dictionaries(
    st.one_of(st.sampled_from(["stream", "max_token", "Model", "tools", "n", "user", "__proto__",
                               "constructor", "model ", "seed", "stop"]), st.text(max_size=12)),
    json_values, max_size=3)


def _dump(obj: Any, ascii_only: bool) -> bytes:
    if ascii_only:
        return json.dumps(obj).encode()  # lone surrogates become \udXXX escapes
    return json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass")


@st.composite
def valid_bodies(draw: st.DrawFn) -> Body:
    """A body the gateway must accept, and what demo/echo must answer to it."""
    ascii_only = draw(st.booleans())  # else UTF-8, where a lone surrogate cannot go
    text = st.text(any_char if ascii_only else st.characters(), max_size=40)
    obj: dict[str, Any] = {"model": draw(st.sampled_from(["demo/echo", "demo/echo", "demo/lorem"]))}
    if draw(st.booleans()):
        obj["prompt"] = draw(text)
        last_user: str | None = obj["prompt"]
    else:
        messages = draw(st.lists(st.fixed_dictionaries({
            "role": st.sampled_from(["system", "user", "assistant"]), "content": text}),
            min_size=1, max_size=5))
        obj["messages"] = messages
        users = [m["content"] for m in messages if m["role"] == "user"]
        last_user = users[-1] if users else ""
    limit = None
    if obj["model"] == "demo/lorem" or draw(st.booleans()):
        limit = draw(st.integers(1, 12))
        obj["max_tokens"] = limit
    if draw(st.booleans()):
        obj["temperature"] = draw(st.floats(0, 2))
    if draw(st.booleans()):
        obj["resume_grace_s"] = draw(st.one_of(st.integers(0, 300), st.floats(0, 300)))
    keys = list(obj)
    order = draw(st.permutations(keys))
    raw = _dump({k: obj[k] for k in order}, ascii_only)
    echo = None
    if obj["model"] == "demo/echo" and last_user is not None:
        echo = "".join(split_words(last_user)[:limit])
    return Body(raw, "valid", echo=echo, valid=True)


@st.composite
def hostile_objects(draw: st.DrawFn) -> Body:
    """A well-formed JSON object after the schema, with hostile values."""
    obj: dict[str, Any] = {}
    fields = {"model": hostile_models, "messages": hostile_messages, "prompt": st.one_of(
        short_text, not_a_string), "max_tokens": hostile_max_tokens,
        "temperature": hostile_temperature, "resume_grace_s": hostile_grace,
        "fallbacks": hostile_fallbacks}
    for name, strategy in fields.items():
        if draw(st.integers(0, 2)):  # two in three: present
            obj[name] = draw(strategy)
    obj.update(draw(extra_fields))
    return Body(_dump(obj, draw(st.booleans())), "hostile-object")


@st.composite
def truncated_json(draw: st.DrawFn) -> Body:
    whole = draw(st.one_of(valid_bodies(), hostile_objects())).raw
    cut = draw(st.integers(0, max(0, len(whole) - 1)))
    return Body(whole[:cut], "truncated")


@st.composite
def nested(draw: st.DrawFn) -> Body:
    depth = draw(st.one_of(st.integers(1, 50), st.integers(900, 1100), st.integers(1, 2000)))
    shape = draw(st.sampled_from(["array", "object", "unbalanced", "in-field", "in-messages"]))
    if shape == "array":
        raw = "[" * depth + "]" * depth
    elif shape == "object":
        depth = min(depth, 800)
        raw = '{"a":' * depth + "1" + "}" * depth
    elif shape == "unbalanced":
        raw = "[" * depth + "]" * draw(st.integers(0, depth))
    elif shape == "in-field":
        depth = min(depth, 1900)
        raw = '{"model":"demo/echo","prompt":' + "[" * depth + "]" * depth + "}"
    else:
        depth = min(depth, 1900)
        raw = '{"model":"demo/echo","messages":' + "[" * depth + "]" * depth + "}"
    return Body(raw.encode(), f"nested-{shape}")


huge_numbers = st.one_of(
    st.integers(1, 4000).map(lambda n: "9" * n),
    st.integers(1, 4000).map(lambda n: "-" + "1" * n),
    st.sampled_from(["1e999999", "-1e400", "1e-400", "0." + "0" * 3000 + "1",
                     "123456789012345678901234567890e-999", "1E+308", "-0"]),
)


@st.composite
def number_bodies(draw: st.DrawFn) -> Body:
    number = draw(huge_numbers)
    where = draw(st.sampled_from(["top", "max_tokens", "temperature", "resume_grace_s",
                                  "prompt", "model", "messages"]))
    fields = {"model": '"demo/echo"', "prompt": '"x"'}
    if where == "top":
        raw = number
    else:
        fields[where] = number
        raw = "{" + ", ".join(f'"{name}": {value}' for name, value in fields.items()) + "}"
    return Body(raw.encode(), "number")


constant_bodies = st.builds(
    lambda constant, where: Body((constant if where == "top" else (
        f'[{constant}]' if where == "list" else
        f'{{"model": "demo/echo", "prompt": "x", "{where}": {constant}}}')).encode(),
        "constant"),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "nan", "inf", "undefined", "None", "True"]),
    st.sampled_from(["top", "list", "temperature", "max_tokens", "resume_grace_s"]))

invalid_texts = st.one_of(
    st.sampled_from([b"", b" ", b"{", b"}", b"{}", b"[]", b"null", b"true", b'"demo/echo"', b"0",
                     b"{'model': 'demo/echo', 'prompt': 'x'}", b'{"model": "demo/echo",}',
                     b'{"model": "demo/echo" "prompt": "x"}', b'{"model": demo/echo}',
                     b'{"model": "demo/echo", "prompt": "x"} trailing',
                     b'{"model": "demo/echo", "prompt": "x"}{"model": "demo/echo"}',
                     b'// comment\n{"model": "demo/echo", "prompt": "x"}',
                     b'\xef\xbb\xbf{"model": "demo/echo", "prompt": "x"}',
                     b'{"model": "demo/echo", "prompt": "\\ud800"}',
                     b'{"model": "demo/echo", "prompt": "\xff\xfe"}',
                     b'{"model": "demo/echo", "prompt": "x", "prompt": 5}',
                     b'\x00{"model": "demo/echo", "prompt": "x"}',
                     "{\"model\": \"demo/echo\", \"prompt\": \"x\"}".encode("utf-16"),
                     "{\"model\": \"demo/echo\", \"prompt\": \"x\"}".encode("utf-32")]),
    st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")),
)

wrong_shapes = st.one_of(
    json_values.map(lambda v: Body(json.dumps(v).encode(), "json-value")),
    st.dictionaries(st.text(max_size=10), json_values, max_size=5).map(
        lambda d: Body(json.dumps(d).encode(), "json-object")),
)


@st.composite
def oversize(draw: st.DrawFn) -> Body:
    size = draw(st.integers(MAX_BODY + 1, MAX_BODY + 3000))
    if draw(st.booleans()):
        head = b'{"model": "demo/echo", "prompt": "'
        return Body(head + b"a" * (size - len(head) - 2) + b'"}', "oversize-json")
    return Body(draw(st.binary(min_size=size, max_size=size)), "oversize-binary")


bodies = weighted(
    (5, valid_bodies()), (5, hostile_objects()), (4, oversize()),
    (1, st.binary(max_size=512).map(lambda b: Body(b, "binary"))),
    (1, truncated_json()), (1, nested()), (1, number_bodies()), (1, constant_bodies),
    (1, invalid_texts.map(lambda b: Body(b, "invalid-text"))), (1, wrong_shapes),
)

cases = st.builds(Case, body=bodies, content_type=content_types, authorization=authorizations,
                  stream_id=stream_ids)


# --------------------------------------------------------------------------- oracle


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def parses_to_object(raw: bytes) -> bool:
    """What the gateway's own parse accepts: a JSON object, no NaN/Infinity."""
    try:
        return isinstance(json.loads(raw, parse_constant=_reject_constant), dict)
    except (ValueError, RecursionError):
        return False


def header_value(raw: bytes | None) -> str | None:
    """The value as the app sees it: gunicorn decodes latin-1 and strips SP/HTAB."""
    return None if raw is None else raw.decode("latin-1").strip(" \t")


def auth_expectation(raw: bytes | None) -> str:
    """"yes": exactly the right key; "no": the key is not a word of it; else "maybe"."""
    value = header_value(raw)
    if value == RIGHT_AUTH:
        return "yes"
    if value is None or KEY not in value.split():
        return "no"
    return "maybe"


def type_expectation(raw: bytes | None) -> str:
    if raw in JSON_TYPES:
        return "json"
    if raw in OTHER_TYPES:
        return "other"
    return "maybe"


def stream_id_expectation(raw: bytes | None) -> str:
    value = header_value(raw)
    if not value:  # absent or empty: the gateway makes one
        return "absent"
    return "valid" if STREAM_ID.fullmatch(value) else "invalid"


# --------------------------------------------------------------------------- HTTP


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def post(server: GatewayServer, case: Case) -> Answer:
    """POST the case's bytes as they are; read the whole answer (a stream to its end)."""
    connection = http.client.HTTPConnection(server.host, server.port, timeout=20)
    try:
        connection.putrequest("POST", "/v1/streams", skip_accept_encoding=True)
        for name, value in (("Content-Type", case.content_type),
                            ("Authorization", case.authorization),
                            ("X-Stream-ID", case.stream_id)):
            if value is not None:
                connection.putheader(name, value)
        connection.putheader("Content-Length", str(len(case.body.raw)))
        connection.endheaders(case.body.raw)
        response = connection.getresponse()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()},
                      response.read())
    finally:
        connection.close()


def request_text(case: Case) -> str:
    """Everything the request carried, as text an answer could legitimately echo."""
    parts = [case.body.raw.decode("latin-1"), case.body.raw.decode("utf-8", "replace")]
    with contextlib.suppress(ValueError, RecursionError):
        parts.append(repr(json.loads(case.body.raw)))
    parts += [header_value(v) or "" for v in (case.content_type, case.authorization,
                                               case.stream_id)]
    return "\n".join(parts)


def assert_no_leak(text: str, case: Case) -> None:
    sent = request_text(case)
    for marker in FORBIDDEN:
        assert marker not in text or marker in sent, f"{marker!r} in the answer: {text[:500]!r}"


def assert_alive(server: GatewayServer) -> None:
    reply = server.request("GET", "/healthz", timeout=10)
    assert reply.status == 200, reply
    log = server.log()
    assert "Traceback" not in log, log[-5000:]


# --------------------------------------------------------------------------- checks


def check_refusal(answer: Answer, case: Case) -> dict[str, Any]:
    assert answer.headers.get("content-type") == "application/json", answer
    document = json.loads(answer.body)
    assert isinstance(document, dict) and set(document) == {"error"}, document
    error = document["error"]
    assert isinstance(error, dict) and set(error) <= {"code", "message", "param"}, error
    assert error["code"] in CODES[answer.status], (answer.status, error)
    assert isinstance(error["message"], str) and error["message"].strip(), error
    assert isinstance(error.get("param", ""), str), error
    assert_no_leak(answer.body.decode("utf-8"), case)
    if answer.status == 401:
        assert answer.headers.get("www-authenticate", "").startswith("Bearer"), answer.headers
    if answer.status in (429, 503):
        assert int(answer.headers["retry-after"]) >= 1, answer.headers
    return error


def check_stream(answer: Answer, case: Case) -> list[ServerSentEvent]:
    assert answer.headers.get("content-type") == "text/event-stream; charset=utf-8", answer
    stream_id = answer.headers.get("x-stream-id", "")
    assert STREAM_ID.fullmatch(stream_id), answer.headers
    assert answer.headers.get("location") == f"/v1/streams/{stream_id}", answer.headers
    if stream_id_expectation(case.stream_id) == "valid":
        assert stream_id == header_value(case.stream_id)
    events = Decoder().feed(answer.body)
    names = [e.event for e in events]
    assert names and names[0] == "start", names
    terminals = [n for n in names if n in TERMINAL]
    assert len(terminals) == 1 and names[-1] in TERMINAL, f"terminal events: {names}"
    for event in events:
        assert isinstance(event.json(), dict), event
    assert_no_leak(answer.body.decode("utf-8", "replace"), case)
    return events


def expected_status(case: Case, created: dict[str, bytes]) -> int | None:
    """The status that follows from the input alone, when it does."""
    auth = auth_expectation(case.authorization)
    if auth == "no":
        return 401
    if auth == "maybe":
        return None
    kind = type_expectation(case.content_type)
    if kind == "other":
        return 415
    if kind == "maybe":
        return None
    if len(case.body.raw) > MAX_BODY:
        return 413
    if not parses_to_object(case.body.raw):
        return 400
    if not case.body.valid:
        return None
    sid = stream_id_expectation(case.stream_id)
    if sid == "invalid":
        return 400
    if sid == "valid" and header_value(case.stream_id) in created:
        # The very same request again is a retry: the stream is replayed.
        return 200 if created[header_value(case.stream_id)] == case.body.raw else 409
    return 200


# --------------------------------------------------------------------------- tests


def test_hostile_requests_get_documented_answers(server: GatewayServer) -> None:
    statuses: Counter[int] = Counter()
    kinds: Counter[str] = Counter()
    # Stream ids this server has, and the body that made each: a reuse with
    # another body answers 409, with the same body it replays the stream.
    created: dict[str, bytes] = {}
    examples = itertools.count(1)

    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.filter_too_much])
    @given(case=cases)
    def hostile_request(case: Case) -> None:
        if next(examples) % HEALTH_EVERY == 0:
            assert_alive(server)
        expected = expected_status(case, created)
        answer = post(server, case)
        statuses[answer.status] += 1
        kinds[case.body.kind] += 1
        assert answer.status in ALLOWED, (answer.status, answer.headers, answer.body[:300])
        if answer.status == 401:
            assert header_value(case.authorization) != RIGHT_AUTH, "401 with the right key"
        if expected is not None:
            assert answer.status == expected, (
                f"expected {expected}, got {answer.status}: {answer.body[:300]!r}")
        if answer.status != 200:
            error = check_refusal(answer, case)
            if answer.status == 409:
                assert header_value(case.stream_id) in created, error
            if expected == 400 and not parses_to_object(case.body.raw):
                assert error["code"] == "invalid_request", error
            return
        events = check_stream(answer, case)
        created.setdefault(answer.headers["x-stream-id"], case.body.raw)
        if case.body.valid:  # the demo provider answers a valid body in full
            assert events[-1].event == "done", events[-1]
        if case.body.echo is not None:
            text = "".join(e.json()["content"] for e in events if e.event == "token")
            assert text == case.body.echo, (text, case.body.echo)

    hostile_request()
    assert_alive(server)
    total = sum(statuses.values())
    record("hostile_input_examples", total)
    record("hostile_input_streams_read", statuses[200])
    # The run reached every layer, not just one refusal.
    for status, least in ((200, 5), (400, 5), (401, 5), (415, 5), (413, 1)):
        assert statuses[status] >= least, (status, statuses, kinds)


# --------------------------------------------------------------------------- below the app

PROTOCOL_CASES = [
    ("a control character in X-Stream-ID",
     [(b"Authorization", latin1(RIGHT_AUTH)), (b"X-Stream-ID", b"abc\x01defghijklmnopqrst")]),
    ("DEL in Authorization", [(b"Authorization", b"Bearer sk-fuzz\x7f-key-1")]),
    ("a NUL in Content-Type", [(b"Authorization", latin1(RIGHT_AUTH)),
                               (b"Content-Type", b"application/json\x00")]),
    ("an Authorization of 9000 bytes", [(b"Authorization", b"Bearer " + b"A" * 9000)]),
    ("a header name with a space", [(b"Authorization", latin1(RIGHT_AUTH)), (b"X Stream", b"1")]),
]


def raw_exchange(server: GatewayServer, headers: list[tuple[bytes, bytes]]) -> Answer:
    body = b'{"model": "demo/echo", "prompt": "hi"}'
    head = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    if not any(name == b"Content-Type" for name, _ in headers):
        head += b"Content-Type: application/json\r\n"
    request = (b"POST /v1/streams HTTP/1.1\r\nHost: gateway\r\n" + head
               + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
            head_end = received.find(b"\r\n\r\n")
            if head_end >= 0:
                match = re.search(rb"(?im)^content-length:\s*(\d+)", received[:head_end])
                if match and len(received) >= head_end + 4 + int(match.group(1)):
                    break
    status_line, _, rest = received.partition(b"\r\n")
    header_block, _, payload = rest.partition(b"\r\n\r\n")
    headers_ = {}
    for line in header_block.split(b"\r\n"):
        name, _, value = line.partition(b":")
        headers_[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
    return Answer(int(status_line.split()[1]), headers_, payload)


def test_requests_refused_before_the_app_get_json_errors(server: GatewayServer) -> None:
    """README: "Every non-2xx answer is JSON". Headers HTTP itself forbids (control
    characters, a field over 8190 bytes, a malformed name) are refused by gunicorn's
    parser before Flask runs; this checks those answers keep the contract too."""
    broken = []
    for label, headers in PROTOCOL_CASES:
        answer = raw_exchange(server, headers)
        assert answer.status >= 400, (label, answer)
        content_type = answer.headers.get("content-type")
        codes = {**CODES, 431: {"payload_too_large"}}.get(answer.status, set())
        code = json.loads(answer.body)["error"]["code"] if content_type == "application/json" \
            else None
        if code not in codes:
            broken.append(f"{label}: {answer.status} {content_type} "
                          f"{answer.body[:120].decode('latin-1')!r}")
    assert_alive(server)
    assert not broken, (
        "requests refused by gunicorn's HTTP parser (config/worker.py) must get the JSON "
        "error body with a documented code (431 = headers too large: payload_too_large):\n  "
        + "\n  ".join(broken))
