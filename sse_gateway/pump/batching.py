"""Batching and smoothing: fewer, larger output events, ending on word, line or
sentence boundaries.

Pure: no gevent, no clock (every time is passed in). ``StreamState`` feeds a
``Batcher`` the text of each output delta under a key (its event name, and a
tool call's index) and builds one event from each piece it hands back, so
batching is decided in one place for every transport and every kind of output.

The rules:

- ``coalesce_s``: deltas of one key are held until ``coalesce_s`` has passed
  since the first of them arrived, then sent as one piece: by ``tick`` at
  ``due``, or by the next delta if it comes first (which then starts the next
  window: a piece holds only deltas that arrived within one window).
- ``chunking``: when a held run may be sent, it is sent up to its last
  boundary; the rest waits for the next boundary, or for a whole
  ``coalesce_s`` more when that is set. Text held past ``MAX_HELD`` characters
  without a boundary is sent up to its last whitespace, else whole, so text
  with no boundary at all (a long URL, CJK without punctuation) still flows.
  Chunking applies to text, reasoning and refusals; a tool call's arguments
  (JSON) are coalesced only.
- A delta of another key sends what is held first (``add`` returns both, in
  order); ``flush`` sends everything held (at the end of a stream, before a
  tool call starts or ends).

Content is never changed: the pieces' concatenation is the deltas'
concatenation, and no piece is empty.

Boundaries (``boundary``):

- ``word``: after whitespace, or after a CJK character (ideograph, kana,
  hangul, full-width punctuation): such text has no spaces between words.
- ``line``: after a line feed.
- ``sentence``: after a line feed; after ``.``, ``!`` or ``?`` (and closing
  quotes, brackets, ``*`` or ``_``) followed by whitespace, the whitespace
  included; right after an ideographic full stop, a full-width ``!`` or ``?``
  (U+3002, U+FF01, U+FF1F; and closers). A ``.`` is
  not a sentence end when it is part of an ellipsis (``...``; ``…`` is never
  one), when it ends a known abbreviation (``Dr.``, ``etc.``, ``vs.``, see
  ``ABBREVIATIONS``), a dotted one (``e.g.``, ``U.S.``, ``a.m.``) or an
  initial (``J. R. Smith``), or a list number at the start of a line
  (``1. First``). A decimal (``3.14``) has no whitespace after its dot, so
  it never ends one. A dot at the very end of the held text is not a
  boundary yet: what follows it decides.
"""

from __future__ import annotations

import re
from collections.abc import Callable

NONE, WORD, LINE, SENTENCE = "none", "word", "line", "sentence"
CHUNKINGS = (NONE, WORD, LINE, SENTENCE)
# Characters held without a boundary before they are sent anyway.
MAX_HELD = 256

Key = tuple[str, int]  # (event name, tool call index; -1 for the text kinds)
Piece = tuple[Key, str]

# CJK text has no spaces between words: each of these characters ends one.
_CJK = ("\u2e80-\u2fff\u3000-\u303f\u3040-\u30ff\u3100-\u312f\u3130-\u318f\u3190-\u31ff"
        "\u3400-\u4dbf\u4e00-\u9fff\ua960-\ua97f\uac00-\ud7af\uf900-\ufaff\ufe30-\ufe4f"
        "\uff00-\uffef")
_LAST_WORD_END = re.compile(rf"(?s).*[\s{_CJK}]")
_LAST_SPACE = re.compile(r"(?s).*\s")
_CLOSERS = "\"'\u201d\u2019)\\]*_\u300d\u300f\uff09"
_SENTENCE_END = re.compile(
    rf"\n|(?P<stop>[.!?]+)[{_CLOSERS}]*\s+|[\u3002\uff01\uff1f]+[{_CLOSERS}]*")
# The word before a dot: what decides whether the dot ends a sentence.
_WORD_BEFORE = re.compile(r"[^\s(\[\"'\u201c\u2018]*\Z")
_DOTTED = re.compile(r"(?:[^\W\d_]\.)+[^\W\d_]")  # e.g, U.S, a.m (the last dot excluded)
_INITIAL = re.compile(r"[^\W\d_]")  # one letter: an initial, or a list letter ("a. First")
_LIST_NUMBER = re.compile(r"(?:\A|\n)[ \t]*\d{1,3}\Z")
ABBREVIATIONS = frozenset([
    "mr", "mrs", "ms", "mx", "dr", "prof", "sr", "jr", "st", "mt", "vs", "etc", "cf",
    "approx", "ca", "fig", "figs", "eq", "eqs", "vol", "vols", "ch", "sec", "pp", "ed",
    "eds", "inc", "ltd", "co", "corp", "dept", "al", "jan", "feb", "mar", "apr", "jun",
    "jul", "aug", "sep", "sept", "oct", "nov", "dec"])


def _after_last_word(text: str) -> int:
    match = _LAST_WORD_END.match(text)
    return match.end() if match else 0


def _after_last_line(text: str) -> int:
    return text.rfind("\n") + 1


def _after_last_space(text: str) -> int:
    match = _LAST_SPACE.match(text)
    return match.end() if match else 0


def _after_last_sentence(text: str) -> int:
    for match in reversed(list(_SENTENCE_END.finditer(text))):
        stop = match.group("stop")
        if stop is None or stop[-1] != "." or _ends_sentence(text, match.start()):
            return match.end()
    return 0


def _ends_sentence(text: str, dot: int) -> bool:
    """Whether the run of dots starting at ``dot`` (followed by whitespace) ends a sentence."""
    if text.startswith("..", dot) or (dot and text[dot - 1] == "."):
        return False  # an ellipsis
    before = text[:dot]
    word = _WORD_BEFORE.search(before)
    token = word.group() if word else ""
    if not token:
        return True
    if (token.lower() in ABBREVIATIONS or _DOTTED.fullmatch(token)
            or _INITIAL.fullmatch(token)):
        return False
    return not _LIST_NUMBER.search(before)


_BOUNDARY: dict[str, Callable[[str], int]] = {
    WORD: _after_last_word, LINE: _after_last_line, SENTENCE: _after_last_sentence}


def boundary(text: str, chunking: str) -> int:
    """The position after the last ``chunking`` boundary in ``text`` (0: none)."""
    return _BOUNDARY[chunking](text)


class Batcher:
    """Holds one run of output of one key; hands back the pieces to send, in order."""

    __slots__ = ("_boundary", "_key", "_parts", "_size", "coalesce_s", "since")

    def __init__(self, coalesce_s: float = 0.0, chunking: str = NONE) -> None:
        if chunking not in CHUNKINGS:
            raise ValueError(f"chunking {chunking!r} is not one of {', '.join(CHUNKINGS)}")
        self.coalesce_s = coalesce_s
        self._boundary = _BOUNDARY.get(chunking)
        self._key: Key | None = None  # the key of what is held (None: nothing is)
        self._parts: list[str] = []
        self._size = 0
        self.since = 0.0  # when the held run began waiting

    @property
    def due(self) -> float | None:
        """When the held run's window closes: from then on ``tick`` (or the next
        delta) sends it (None: only a delta, a boundary or the end will)."""
        if self._key is None or self.coalesce_s <= 0:
            return None
        return self.since + self.coalesce_s

    def add(self, key: Key, text: str, now: float) -> list[Piece]:
        """Hold ``text`` (of ``key``); the pieces to send now, in order: what was held
        of another key, or held past its window, goes before it."""
        pieces: list[Piece] = []
        if self._key is not None:
            if text and self._key != key:
                pieces.append(self._take(self._key, self._join()))
            elif self.coalesce_s > 0 and now >= self.since + self.coalesce_s:
                pieces.extend(self._ready(now))  # its window closed before this delta came
        if not text:
            return pieces  # nothing to hold (and no piece is ever empty)
        if self._key is None:
            self._key, self.since = key, now
        self._parts.append(text)
        self._size += len(text)
        if self.coalesce_s <= 0:  # chunking alone: up to the last boundary goes now
            pieces.extend(self._ready(now))
        return pieces

    def tick(self, now: float) -> list[Piece]:
        """What is due to be sent at ``now`` (at or after ``due``; before it, nothing)."""
        if self._key is None:
            return []
        return self._ready(now)

    def flush(self) -> Piece | None:
        """Everything held, as one piece (None when nothing is)."""
        key = self._key
        if key is None:
            return None
        return self._take(key, self._join())

    def _join(self) -> str:
        parts = self._parts
        if len(parts) > 1:
            parts[:] = ["".join(parts)]
        return parts[0] if parts else ""

    def _take(self, key: Key, text: str, rest: str = "", now: float = 0.0) -> Piece:
        """``text`` is sent; ``rest`` stays held, its wait starting ``now``."""
        if rest:
            self._parts[:] = [rest]
            self._size = len(rest)
            self.since = now
        else:
            self._parts.clear()
            self._size = 0
            self._key = None
        return key, text

    def _ready(self, now: float) -> list[Piece]:
        key = self._key
        assert key is not None
        if now < self.since + self.coalesce_s:
            return []
        find = self._boundary if key[1] < 0 else None
        text = self._join()
        if find is None:
            return [self._take(key, text)]
        cut = find(text)
        if cut == 0 and self._size >= MAX_HELD:
            cut = _after_last_space(text) or len(text)
        if cut == 0:
            # No boundary: a full window sends it anyway; without one it waits.
            return [self._take(key, text)] if self.coalesce_s > 0 else []
        pieces = [self._take(key, text[:cut], text[cut:], now)]
        if self._size >= MAX_HELD:  # what is left still holds too much: it goes too
            pieces.append(self._take(key, self._join()))
        return pieces
