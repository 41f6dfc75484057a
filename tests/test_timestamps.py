"""app/timestamps.py: every TA-CoT span form, MM.SS detection, and streaming that equals the whole text."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.timestamps import SpanStream, TimeSpan, find_time_spans, format_reasoning, format_seconds, format_step


def spans(text, media_duration=None):
    return [(s.start_s, s.end_s, s.form, text[s.start_index:s.end_index]) for s in find_time_spans(text, media_duration)]


@pytest.mark.parametrize("text, expected", [
    ("<t>4.2-11.0</t> The host introduces the guest.", [(4.2, 11.0, "tag", "<t>4.2-11.0</t>")]),
    ("<t>12.5</t> a point", [(12.5, 12.5, "tag", "<t>12.5</t>")]),
    ("<t>00:15-00:20</t> clock values in a tag", [(15.0, 20.0, "tag", "<t>00:15-00:20</t>")]),
    ('[11.0 - 14.0] "There\'s no need to complicate it,"', [(11.0, 14.0, "bracket", "[11.0 - 14.0]")]),
    ("[00:15-00:20] and [3 s] and [12.5]", [(15.0, 20.0, "bracket", "[00:15-00:20]"),
                                            (3.0, 3.0, "bracket", "[3 s]"), (12.5, 12.5, "bracket", "[12.5]")]),
    ("the second one spans roughly 10.7s to 16.9s.", [(10.7, 16.9, "prose", "10.7s to 16.9s")]),
    ("it is said from 3 to 5 seconds in", [(3.0, 5.0, "prose", "from 3 to 5 seconds")]),
    ("between 3 and 5 s", [(3.0, 5.0, "prose", "between 3 and 5 s")]),
    ("3-5 s later", [(3.0, 5.0, "prose", "3-5 s")]),
    ("a bell at 12.5s, then", [(12.5, 12.5, "prose", "at 12.5s")]),
    ("00:15", [(15.0, 15.0, "clock", "00:15")]),
    ("at 01:02:03 exactly", [(3723.0, 3723.0, "clock", "at 01:02:03")]),
    ("1:03.4 is when", [(63.4, 63.4, "clock", "1:03.4")]),
    ("from 00:15 to 00:20", [(15.0, 20.0, "clock", "from 00:15 to 00:20")]),
    ("4.2\u201311.0 is a bare range", [(4.2, 11.0, "bare", "4.2\u201311.0")]),
])
def test_every_form(text, expected):
    assert spans(text) == expected


@pytest.mark.parametrize("text", [
    "the clip lasts 20 seconds",          # a duration, not a time
    "from 3 to 5 people",                 # no unit
    "see [1] and [2]",                    # citations
    "3-5 apples",
    "version 3.1415926-2.7182818",        # numbers too long to be times
    "ratio 16:9",
    "<t>11.0-4.2</t> ends before it starts",
])
def test_not_spans(text):
    assert spans(text) == []


def test_offsets_and_zero_length_points():
    text = "First <t>0-2.5</t> x\nthen at 00:07 y"
    found = find_time_spans(text)
    assert [text[s.start_index:s.end_index] for s in found] == ["<t>0-2.5</t>", "at 00:07"]
    assert found[1].start_s == found[1].end_s == 7.0


def test_mmss_detection():
    # three-digit fractions below .60 read as MM.SS: 0:57.4 to 1:03.4
    s = find_time_spans("<t>0.574-1.034</t> a\n<t>1.05-1.20</t> b")
    assert [(x.start_s, x.end_s, x.mmss) for x in s] == [(57.4, 63.4, True), (65.0, 80.0, True)]
    assert spans("at 0.574-1.034") == [(57.4, 63.4, "bare", "at 0.574-1.034")]
    # a fractional part of .60 or more cannot be MM.SS: the text is seconds from there on
    s = find_time_spans("<t>1.75-1.80</t> a\n<t>0.574-1.034</t> b")
    assert [(x.start_s, x.end_s, x.mmss) for x in s] == [(1.75, 1.80, False), (0.574, 1.034, False)]
    # an MM.SS reading past the end of the media is not MM.SS
    s = find_time_spans("<t>0.574-1.034</t>", media_duration=30.0)
    assert (s[0].start_s, s[0].end_s, s[0].mmss) == (0.574, 1.034, False)
    s = find_time_spans("<t>0.574-1.034</t>", media_duration=120.0)
    assert (s[0].start_s, s[0].end_s, s[0].mmss) == (57.4, 63.4, True)
    # the canonical format (one or two decimals) never reads as MM.SS
    s = find_time_spans("<t>0.50-1.25</t> a\n<t>1.3-1.4</t> b")
    assert [(x.start_s, x.end_s, x.mmss) for x in s] == [(0.5, 1.25, False), (1.3, 1.4, False)]


def test_canonical_format_round_trips():
    text = format_reasoning([(4.2, 11.0, "The host speaks."), (12.25, 13.0, "A bell.")], "(B) a bell")
    assert text == "<think>\n<t>4.2-11.0</t> The host speaks.\n<t>12.25-13.0</t> A bell.\n</think>\n(B) a bell"
    assert [(s.start_s, s.end_s) for s in find_time_spans(text)] == [(4.2, 11.0), (12.25, 13.0)]
    assert format_seconds(3.0) == "3.0" and format_seconds(3.456) == "3.46" and format_seconds(0.05) == "0.05"
    assert format_step(1, 2, "x") == "<t>1.0-2.0</t> x"


def test_stream_emits_when_complete_never_a_prefix():
    s = SpanStream()
    out = [s.feed(d) for d in ["<t>1", "2.5", "-13", ".0</t", ">"]]
    assert out[:4] == [[], [], [], []]
    assert out[4] == [TimeSpan(12.5, 13.0, 0, 16, "tag")]
    s = SpanStream()
    assert s.feed("the bell at 1") == []           # "1" may still grow
    assert s.feed("2.5") == []
    assert s.feed("s") == []                        # "12.5s to 14s" may follow
    assert s.feed(" and") == []
    got = s.feed(" then")
    assert got == [] and s.feed(" ") == [TimeSpan(12.5, 12.5, 9, 17, "prose")]
    assert s.close() == []
    s = SpanStream()
    assert s.feed("at 12.5") == [] and s.close() == [TimeSpan(12.5, 12.5, 0, 7, "prose")]


def test_stream_line_by_line_latency():
    s = SpanStream()
    lines = ["<think>\n", "<t>0.0-2.5</t> A red circle appears.\n", "<t>3.0-4.5</t> The word cat.\n"]
    assert s.feed(lines[0]) == []
    assert [x.start_s for x in s.feed(lines[1])] == [0.0]
    assert [x.start_s for x in s.feed(lines[2])] == [3.0]


FRAGMENTS = ["<t>", "</t>", "[", "]", "0", "12", "3.5", "0.574", "1.034", "00:15", "1:03.4", "01:02:03", " ", "-",
             " - ", " to ", "from ", "between ", " and ", "at ", "around ", "s", " seconds", "sec", "\n", ".", ",",
             "The ", "host", "<", ">", ":", "\u2013", "t", "/", "7", "1.75", "a", "to", "and", "<t>4.2-11.0</t>"]


def _feed_split(text, cuts, media_duration):
    stream, out, prev = SpanStream(media_duration), [], 0
    for c in sorted(set(cuts)) + [len(text)]:
        out += stream.feed(text[prev:c])
        prev = c
    return out + stream.close()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=30).map("".join),
       st.lists(st.integers(0, 400), max_size=10), st.sampled_from([None, 30.0, 100.0]))
def test_stream_any_split_equals_whole_text(text, cuts, media_duration):
    cuts = [c for c in cuts if c <= len(text)]
    assert _feed_split(text, cuts, media_duration) == find_time_spans(text, media_duration)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789.:- \n<>/t[]sfromandbetweenc,\u2013", max_size=40))
def test_stream_char_by_char_equals_whole_text(text):
    assert _feed_split(text, range(len(text)), None) == find_time_spans(text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=20).map("".join), st.sampled_from([None, 100.0]))
def test_stream_fragments_char_by_char_equals_whole_text(text, media_duration):
    assert _feed_split(text, range(len(text)), media_duration) == find_time_spans(text, media_duration)


def test_stream_holds_back_an_open_tag_or_bracket():
    s = SpanStream()
    assert s.feed("<t>4.2-11.0<") == []            # not the bare range 4.2-11.0: the tag may still close
    assert s.feed("/t>") == [TimeSpan(4.2, 11.0, 0, 15, "tag")]
    s = SpanStream()
    assert s.feed("[11.0 - 14.0") == [] and s.feed("]")[0].form == "bracket"
    s = SpanStream()                               # a bracket that cannot close any more holds nothing back
    assert s.feed("[note: at 00:15, a bell") == [TimeSpan(15.0, 15.0, 7, 15, "clock")]
