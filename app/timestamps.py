"""Time spans in model text: every written form of a TA-CoT trace, also while it streams.

Forms read (shared/spec/temporal-cot.md), each a `TimeSpan` with its character offsets:

    tag      <t>4.2-11.0</t>, <t>12.5</t>            (seconds, or clock values inside)
    bracket  [11.0 - 14.0], [00:15-00:20], [3 s]
    prose    10.7s to 16.9s, from 3 to 5 seconds, between 3 and 5 s, at 12.5s, at 12.5
    clock    00:15, 01:02:03, 1:03.4, 00:15 - 00:20  (a lone clock time is a zero-length span)
    bare     0.574-1.034, 4.2-11.0                   (two decimals joined by a dash)

A lone number with a unit ("20 seconds") is a duration, not a time, and is not a span; a range
needs a unit, clock values, decimal points on both sides, or delimiters.

MM.SS readings. Some traces write 0:57.4 as `0.574`. Only unit-less, colon-less numbers of tag,
bracket and bare spans are candidates, and a text is read left to right with a three-state mode:
a fractional part of .60 or more anywhere makes the text seconds for good (such a value cannot be
MM.SS); otherwise a span with a three-digit fraction (`0.574`: two digits of seconds and a tenth)
switches the text to MM.SS, unless the MM.SS reading would end after the media (when its length is
known), which also makes the text seconds. Once in MM.SS mode, later candidates read as MM.SS.
(The spec's other hint, "a seconds reading beyond the media length", cannot separate the readings:
an MM.SS reading is never smaller than the seconds reading, so only its converse is used.) The
project's canonical format (`<t>START-END</t>`, one or two decimals) never reads as MM.SS.

Streaming. `SpanStream.feed` returns a span once no continuation of the text can change it. A
span is final when a barrier follows it: a character no pattern consumes (newline, comma, `>`,
...) or a complete word that is not one of the pattern words (to, from, seconds, ...); a
delimited span (`<t>...</t>`, `[...]`) is final when its closer arrives. An opened `<t>` or `[`
that may still close holds back everything after it. Because the mode only depends on earlier
spans, any split of a text yields exactly `find_time_spans` of the whole text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_WS = r"[ \t]{0,2}"
_NUM = r"(?<![\w.:])\d{1,6}(?:\.\d{1,6})?(?!\d|\.\d|:\d)"
_DEC = r"(?<![\w.:])\d{1,6}\.\d{1,6}(?!\d|\.\d|:\d)"
_CLOCK = r"(?<![\w.:])\d{1,2}(?::[0-5]\d){1,2}(?:\.\d{1,3})?(?!\d|\.\d|:\d)"
_TIME = rf"(?:{_CLOCK}|{_NUM})"
_UNIT = r"[ \t]?(?:seconds?|secs?|s)(?![A-Za-z])"
_SEP = r"(?:[-\u2013\u2014]|(?<![A-Za-z])(?:to|until|till|through)(?![A-Za-z]))"
_LEAD = r"(?:(?<![A-Za-z])(?:from|at|around)[ \t]{1,2})?"
_AND = rf"{_WS}(?<![A-Za-z])and(?![A-Za-z]){_WS}"

_CONTENT_RANGE = rf"{_TIME}(?:{_UNIT})?{_WS}{_SEP}{_WS}{_TIME}(?:{_UNIT})?"
_PATTERNS = {
    "tag": rf"<t>{_WS}(?:{_CONTENT_RANGE}|{_TIME}(?:{_UNIT})?){_WS}</t>",
    "bracket": rf"\[{_WS}(?:{_CONTENT_RANGE}|{_CLOCK}(?:{_UNIT})?|{_NUM}{_UNIT}|{_DEC}){_WS}\]",
    "clock": rf"{_LEAD}{_CLOCK}(?:{_UNIT})?{_WS}{_SEP}{_WS}{_CLOCK}(?:{_UNIT})?",
    "between": (rf"(?<![A-Za-z])between[ \t]{{1,2}}(?:{_CLOCK}(?:{_UNIT})?{_AND}{_CLOCK}(?:{_UNIT})?"
                rf"|{_NUM}(?:{_UNIT})?{_AND}{_NUM}{_UNIT}|{_NUM}{_UNIT}{_AND}{_NUM})"),
    "prose": rf"{_LEAD}(?:{_NUM}(?:{_UNIT})?{_WS}{_SEP}{_WS}{_NUM}{_UNIT}|{_NUM}{_UNIT}{_WS}{_SEP}{_WS}{_NUM})",
    "bare": rf"{_LEAD}{_DEC}{_WS}[-\u2013\u2014]{_WS}{_DEC}",
    "at": rf"(?<![A-Za-z])(?:at|around)[ \t]{{1,2}}(?:{_CLOCK}(?:{_UNIT})?|{_NUM}{_UNIT}|{_DEC})",
    "clock1": rf"{_CLOCK}(?:{_UNIT})?",
}
# Alternatives are tried in this order at each position (Python's alternation is ordered).
_SPAN_RE = re.compile("|".join(f"(?P<{k}>{v})" for k, v in _PATTERNS.items()), re.ASCII | re.IGNORECASE)
_VALUE_RE = re.compile(rf"(?P<clock>{_CLOCK})|(?P<num>{_NUM})(?P<unit>{_UNIT})?", re.ASCII | re.IGNORECASE)

# What the streaming frontier needs to know about the patterns above.
_KEYWORDS = {"from", "between", "at", "around", "and", "to", "until", "till", "through",
             "s", "sec", "secs", "second", "seconds"}
_CONSUMABLE = set("0123456789.: \t-\u2013\u2014")          # plus ASCII letters
_DELIMITERS = {"<": ("<t>", "</t>"), "[": ("[", "]")}
_DELIMITED_MAX = 64             # longer than any content the tag/bracket patterns accept
_CONTENT_CHARS = set("0123456789.: \t-\u2013\u2014abcdefghijklmnopqrstuvwxyz")
_MMSS_SLACK_S = 0.5


@dataclass(frozen=True)
class TimeSpan:
    """A time span written in a text: seconds, and where it is written (text[start_index:end_index]).

    A single time is a zero-length span (start_s == end_s). `form` is how it is written: tag,
    bracket, prose, clock or bare; `mmss` is True when its numbers were read as MM.SS.
    """
    start_s: float
    end_s: float
    start_index: int
    end_index: int
    form: str
    mmss: bool = False


def _clock_seconds(text: str) -> float:
    parts = text.split(":")
    value = 0.0
    for p in parts:
        value = value * 60 + float(p)
    return value


def _mmss_seconds(text: str) -> float:
    whole, _, frac = text.partition(".")
    frac = frac.ljust(2, "0")
    return int(whole) * 60 + float(frac[:2] + "." + (frac[2:] or "0"))


def _frac_at_least_60(text: str) -> bool:
    _, _, frac = text.partition(".")
    return bool(frac) and int(frac[:2].ljust(2, "0")) >= 60


def _read(m: re.Match, mode: str | None, media_duration: float | None) -> tuple[TimeSpan | None, str | None]:
    """One pattern match -> (its TimeSpan or None when it is no valid span, the MM.SS mode after it)."""
    kind = m.lastgroup
    values = list(_VALUE_RE.finditer(m.group(kind)))
    candidates = kind in ("tag", "bracket", "bare") and all(v.group("num") and not v.group("unit") for v in values)
    mmss = False
    if candidates:
        nums = [v.group("num") for v in values]
        if any(_frac_at_least_60(n) for n in nums):
            mode = "seconds"
        elif mode == "mmss" or (mode is None and any(len(n.partition(".")[2]) >= 3 for n in nums)):
            fits = media_duration is None or max(map(_mmss_seconds, nums)) <= media_duration + _MMSS_SLACK_S
            mode = "mmss" if fits else "seconds"
            mmss = fits
    seconds = [(_clock_seconds(v.group("clock")) if v.group("clock") else
                _mmss_seconds(v.group("num")) if mmss else float(v.group("num"))) for v in values]
    start, end = seconds[0], seconds[-1]
    if end < start:
        return None, mode
    form = kind if kind in ("tag", "bracket", "bare") else "clock" if any(v.group("clock") for v in values) else "prose"
    return TimeSpan(start, end, m.start(), m.end(), form, mmss), mode


def find_time_spans(text: str, media_duration: float | None = None) -> list[TimeSpan]:
    """Every time span written in `text`, in order. `media_duration` (seconds) helps tell MM.SS."""
    stream = SpanStream(media_duration)
    stream.text = text
    return stream.close()


def _open_delimiter(text: str, at: int) -> bool:
    """Can the `<t>` / `[` at `at` still become a delimited span as more text arrives?"""
    opener, closer = _DELIMITERS[text[at]]
    rest = text[at:at + len(opener) + _DELIMITED_MAX + len(closer) + 1].lower()
    if len(rest) <= len(opener):
        return opener.startswith(rest)
    if not rest.startswith(opener):
        return False
    for i in range(len(opener), len(rest)):
        if rest.startswith(closer, i):
            return False                           # closed: the pattern has decided
        if closer.startswith(rest[i:]):
            return True                            # a closer still arriving
        if rest[i] not in _CONTENT_CHARS or i - len(opener) >= _DELIMITED_MAX:
            return False
    return True


def _frontier(text: str, start: int) -> int:
    """An index such that the spans of `text` ending at or before it are final."""
    front = start
    i = len(text) - 1
    while i >= start:
        c = text[i]
        if c.isascii() and c.isalpha():
            j = i
            while j > 0 and text[j - 1].isascii() and text[j - 1].isalpha():
                j -= 1
            if i + 1 < len(text) and text[j:i + 1].lower() not in _KEYWORDS:
                front = max(start, j)              # a complete word no pattern reads
                break
            i = j - 1
            continue
        if c not in _CONSUMABLE:
            front = i + 1                          # no pattern reads across it
            break
        i -= 1
    for o in range(max(start, len(text) - len("<t>") - _DELIMITED_MAX - len("</t>") - 1), len(text)):
        if text[o] in _DELIMITERS and _open_delimiter(text, o):
            return min(front, o)
    return front


class SpanStream:
    """Time spans of a growing text, each returned once, as soon as it is final.

        stream = SpanStream(media_duration=90.0)
        for delta in deltas: annotate(stream.feed(delta))
        annotate(stream.close())     # the spans the end of the text completes

    Offsets are into the whole text fed so far (`stream.text`).
    """

    def __init__(self, media_duration: float | None = None):
        self.media_duration = media_duration
        self.text = ""
        self._pos = 0           # where the next scan starts: the end of the last span returned
        self._mode = None       # MM.SS mode after the spans returned

    def _advance(self, limit: int) -> list[TimeSpan]:
        out = []
        for m in _SPAN_RE.finditer(self.text, self._pos):
            if m.end() > limit:
                break
            span, self._mode = _read(m, self._mode, self.media_duration)
            self._pos = m.end()
            if span is not None:
                out.append(span)
        return out

    def feed(self, delta: str) -> list[TimeSpan]:
        self.text += delta
        return self._advance(_frontier(self.text, self._pos))

    def close(self) -> list[TimeSpan]:
        return self._advance(len(self.text))


def format_seconds(t: float) -> str:
    """A time as the canonical format writes it: one decimal, or two when the second is needed."""
    s = f"{t:.2f}"
    return s.removesuffix("0")


def format_step(start: float, end: float, text: str) -> str:
    """One canonical reasoning step: `<t>START-END</t> text`."""
    return f"<t>{format_seconds(start)}-{format_seconds(end)}</t> {text}"


def format_reasoning(steps: list[tuple[float, float, str]], answer: str) -> str:
    """The canonical TA-CoT target: `<think>\\n` steps one a line `\\n</think>\\n` answer.

    The layout is the chat template's rendering of an assistant turn with reasoning content, so a
    trainer can feed it as the assistant message unchanged.
    """
    return "<think>\n" + "\n".join(format_step(a, b, t) for a, b, t in steps) + "\n</think>\n" + answer
