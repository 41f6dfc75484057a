"""MMOU-style questions about a synthetic clip, with ten options and a TA-CoT reasoning target.

Each template reads the timeline, returns None where it does not apply (nothing unambiguous to
ask), and otherwise a question, the right option, nine distinct distractors (plausible ones
first: things that do occur in the clip), and reasoning steps, each anchored to a time span.
The evidence span (start_time, end_time) is the hull of the steps' spans, which is how
app/evaluate.py reads a predicted span, so a right trace grounds with IoU 1. The right option's
position is drawn uniformly, so each letter is right equally often.

`reasoning` is app.timestamps.format_reasoning(steps, "(X) option text").

A question names what it asks about last (`When is this spoken: the word "bird"?`): the answer's
first span number is then a fixed run of tokens (`?` and the chat template) after the subject,
which a small decoder learns to carry. Asked `When is the word "bird" spoken?`, the default
model's decoder never keyed its answer on the subject (recipes/train/FINDINGS.md).
"""

from __future__ import annotations

from collections import Counter
from itertools import permutations

import numpy as np

from app.timestamps import format_reasoning, format_seconds
from recipes.synthetic.timeline import COLOURS, SHAPES, SOUNDS, Event, Timeline, shape_label, speech_label, word_label

LETTERS = "ABCDEFGHIJ"
N_OPTIONS = len(LETTERS)


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _span_text(a: float, b: float) -> str:
    return f"from {format_seconds(a)} s to {format_seconds(b)} s"


def _overlap(a0, a1, b0, b1) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def _unique(events: list[Event]) -> list[Event]:
    """Events whose label no other event of the list shares."""
    counts = Counter(e.label for e in events)
    return [e for e in events if counts[e.label] == 1]


def _options(rng, correct: str, tiers: list[list[str]]) -> tuple[list[str], int] | None:
    """Ten options: `correct` at a uniform position, nine distractors taken tier by tier (each tier
    shuffled). None if there are not nine distinct distractors."""
    picked, seen = [], {correct}
    for tier in tiers:
        tier = [t for t in dict.fromkeys(tier) if t not in seen]
        for k in rng.permutation(len(tier)):
            if len(picked) == N_OPTIONS - 1:
                break
            picked.append(tier[k])
            seen.add(tier[k])
    if len(picked) < N_OPTIONS - 1:
        return None
    pos = int(rng.integers(N_OPTIONS))
    return picked[:pos] + [correct] + picked[pos:], pos


def _objects(tl: Timeline) -> list[Event]:
    return [e for e in tl.visual if e.kind != "flash"]


def _catalogue_labels(words: list[str]) -> list[str]:
    return ([shape_label(c, s) for c in COLOURS for s in SHAPES]
            + [word_label(c, w) for c in COLOURS for w in words])


def _audio_labels(vocabulary: list[str]) -> list[str]:
    return list(SOUNDS) + [speech_label(w) for w in vocabulary]


def _span_options(rng, tl: Timeline, a: float, b: float, others: list[Event]):
    """Time-span options: other events' spans, then random spans of about the same length, none
    overlapping the right one by IoU 0.3 or more."""
    def far(x0, x1):
        inter = _overlap(a, b, x0, x1)
        return inter / (max(b, x1) - min(a, x0)) < 0.3
    real = [_span_text(e.t0, e.t1) for e in others if far(e.t0, e.t1)]
    real = [real[k] for k in rng.permutation(len(real))[:5]]
    rand = []
    length = b - a
    for _ in range(200):
        d = round(max(0.3, length * float(rng.uniform(0.6, 1.4))), 1)
        x0 = round(float(rng.uniform(0, max(0.1, tl.duration - d))), 1)
        if far(x0, x0 + d):
            rand.append(_span_text(x0, round(x0 + d, 1)))
    return _options(rng, _span_text(a, b), [real, rand])


def _count_options(rng, c: int):
    near = sorted((k for k in range(c + 12) if k != c), key=lambda k: (abs(k - c), k))
    return _options(rng, str(c), [[str(k) for k in near[:9]]])


def when_pool(tl: Timeline, modality: str) -> list[Event]:
    """The events a "When is X?" question can ask about: on screen, the objects (flashes aside) whose
    label no other object shares; heard, the audio events whose label no other sound shares."""
    return _unique(_objects(tl)) if modality == "visual" else _unique(tl.audio)


def when_question(e: Event) -> tuple[str, tuple[float, float, str], str]:
    """(question, reasoning step, right answer's text) of "When is this on screen / spoken / heard: <e>?"."""
    how = "on screen" if e.modality == "visual" else "spoken" if e.kind == "speech" else "heard"
    return f"When is this {how}: {e.label}?", (e.t0, e.t1, f"{_cap(e.label)} is {how}."), _span_text(e.t0, e.t1)


def q_when_visual(tl, rng, ctx):
    pool = when_pool(tl, "visual")
    if not pool:
        return None
    e = pool[int(rng.integers(len(pool)))]
    opts = _span_options(rng, tl, e.t0, e.t1, [o for o in tl.visual if o is not e])
    question, step, _ = when_question(e)
    return opts and (question, opts, ["temporal understanding"], [step])


def q_when_audio(tl, rng, ctx):
    pool = when_pool(tl, "audio")
    if not pool:
        return None
    e = pool[int(rng.integers(len(pool)))]
    opts = _span_options(rng, tl, e.t0, e.t1, [o for o in tl.audio if o is not e])
    question, step, _ = when_question(e)
    return opts and (question, opts, ["temporal understanding"], [step])


def q_count_audio(tl, rng, ctx):
    counts = Counter(e.label for e in tl.audio)
    if not counts:
        return None
    labels = sorted(counts)
    many = [k for k in labels if counts[k] >= 2]
    label = (many or labels)[int(rng.integers(len(many or labels)))]
    hits = [e for e in tl.audio if e.label == label]
    verb = "spoken" if hits[0].kind == "speech" else "heard"
    steps = [(e.t0, e.t1, f"{_cap(label)} is {verb}, {k} so far.") for k, e in enumerate(hits, 1)]
    opts = _count_options(rng, len(hits))
    return opts and (f"How many times is this {verb}: {label}?", opts, ["counting"], steps)


def q_count_visual(tl, rng, ctx):
    objects = _objects(tl)
    if not objects:
        return None
    if rng.random() < 0.5:
        colour = sorted({e.colour for e in objects})[int(rng.integers(len({e.colour for e in objects})))]
        hits, question = [e for e in objects if e.colour == colour], f"How many things appear on screen in this colour: {colour}?"
    else:
        shapes = sorted({e.shape for e in objects if e.shape})
        if not shapes:
            return None
        shape = shapes[int(rng.integers(len(shapes)))]
        hits, question = [e for e in objects if e.shape == shape], f"How many of these appear on screen: {shape}s?"
    steps = [(e.t0, e.t1, f"{_cap(e.label)} appears, {k} so far.") for k, e in enumerate(hits, 1)]
    opts = _count_options(rng, len(hits))
    return opts and (question, opts, ["counting"], steps)


def q_order_visual(tl, rng, ctx):
    pool = _unique(_objects(tl))
    chosen = []
    for k in rng.permutation(len(pool)):
        if all(abs(pool[k].t0 - c.t0) >= 1.0 for c in chosen):
            chosen.append(pool[k])
        if len(chosen) == 4:
            break
    if len(chosen) < 4:
        return None
    asked = [e.label for e in chosen]
    chosen.sort(key=lambda e: e.t0)
    right = ", then ".join(e.label for e in chosen)
    others = [", then ".join(chosen[i].label for i in p) for p in permutations(range(4))]
    opts = _options(rng, right, [others])
    return opts and (f"In what order do these first appear on screen: {'; '.join(asked)}?", opts,
                     ["sequential reasoning"], [(e.t0, e.t1, f"{_cap(e.label)} appears.") for e in chosen])


def after_pool(tl: Timeline) -> list[tuple[Event, Event]]:
    """(a, b): each sound whose label no other sound shares, and the sound right after it."""
    audio = tl.audio
    unique = {e.label for e in _unique(audio)}
    return [(audio[i], audio[i + 1]) for i in range(len(audio) - 1) if audio[i].label in unique]


def after_question(a: Event, b: Event) -> tuple[str, list[tuple[float, float, str]], str]:
    """(question, reasoning steps, right answer's text) of "What is heard right after this: <a>?"."""
    return (f"What is heard right after this: {a.label}?",
            [(a.t0, a.t1, f"{_cap(a.label)} is heard."), (b.t0, b.t1, f"Next, {b.label} is heard.")], b.label)


def q_after_audio(tl, rng, ctx):
    pool = after_pool(tl)
    if not pool:
        return None
    a, b = pool[int(rng.integers(len(pool)))]
    question, steps, answer = after_question(a, b)
    opts = _options(rng, answer, [[e.label for e in tl.audio], _audio_labels(ctx["words"])])
    return opts and (question, opts, ["sequential reasoning"], steps)


def q_needle(tl, rng, ctx):
    flashes = [e for e in tl.visual if e.kind == "flash"]
    if len(flashes) != 1:
        return None
    f = flashes[0]
    shown = [e.word for e in tl.visual if e.kind == "word"]
    opts = _options(rng, f.word, [shown, [w.upper() for w in ctx["nouns"]]])
    return opts and ("At one moment a word flashes on screen for about a second. Which word is it?", opts,
                     ["needle-in-the-haystack"], [(f.t0, f.t1, f"The word {f.word} flashes on screen.")])


def said_pool(tl: Timeline) -> list[tuple[Event, Event]]:
    """(w, o): each spoken word no other sound shares, said while exactly one object (not the flash)
    is on screen, wholly within its time there; and that object."""
    pool = []
    for w in _unique([e for e in tl.audio if e.kind == "speech"]):
        during = [o for o in tl.visual if _overlap(o.t0, o.t1, w.t0, w.t1) > 0]
        if len(during) == 1 and during[0].kind != "flash" and during[0].t0 <= w.t0 and w.t1 <= during[0].t1:
            pool.append((w, during[0]))
    return pool


def said_question(w: Event, o: Event) -> tuple[str, list[tuple[float, float, str]], str]:
    """(question, reasoning steps, right answer's text) of "What is on screen when this is spoken: <w>?"."""
    return (f"What is on screen when this is spoken: {w.label}?",
            [(w.t0, w.t1, f"{_cap(w.label)} is spoken."), (o.t0, o.t1, f"{_cap(o.label)} is on screen at that moment.")],
            o.label)


def while_pool(tl: Timeline) -> list[tuple[Event, Event]]:
    """(o, w): each object no other object shares a label with, and the one word spoken while it is
    on screen, wholly within that time."""
    speech = [e for e in tl.audio if e.kind == "speech"]
    pool = []
    for o in _unique(_objects(tl)):
        during = [w for w in speech if _overlap(o.t0, o.t1, w.t0, w.t1) > 0]
        if len(during) == 1 and o.t0 <= during[0].t0 and during[0].t1 <= o.t1:
            pool.append((o, during[0]))
    return pool


def while_question(o: Event, w: Event) -> tuple[str, list[tuple[float, float, str]], str]:
    """(question, reasoning steps, right answer's text) of "Which word is spoken while this is on screen: <o>?"."""
    return (f"Which word is spoken while this is on screen: {o.label}?",
            [(o.t0, o.t1, f"{_cap(o.label)} is on screen."), (w.t0, w.t1, f'Meanwhile the word "{w.word}" is spoken.')],
            w.word)


def chain_pool(tl: Timeline) -> list[tuple[str, list[tuple[float, float, str]], str]]:
    """Every question that chains two lookups (find one thing, then what is next to it or on at the
    same time) the templates can ask of `tl`, as (question, reasoning steps, answer's text)."""
    return ([after_question(a, b) for a, b in after_pool(tl)] + [said_question(w, o) for w, o in said_pool(tl)]
            + [while_question(o, w) for o, w in while_pool(tl)])


def q_on_screen_when_said(tl, rng, ctx):
    pool = said_pool(tl)
    if not pool:
        return None
    question, steps, answer = said_question(*pool[int(rng.integers(len(pool)))])
    opts = _options(rng, answer, [[e.label for e in _objects(tl)], ctx["catalogue"]])
    return opts and (question, opts, ["audio-visual stitching"], steps)


def q_said_while_on_screen(tl, rng, ctx):
    pool = while_pool(tl)
    if not pool:
        return None
    question, steps, answer = while_question(*pool[int(rng.integers(len(pool)))])
    opts = _options(rng, answer, [[e.word for e in tl.audio if e.kind == "speech"], ctx["words"]])
    return opts and (question, opts, ["audio-visual stitching"], steps)


def q_most_heard(tl, rng, ctx):
    counts = Counter(e.label for e in tl.audio).most_common()
    if len(counts) < 2 or counts[0][1] < 2 or counts[0][1] == counts[1][1]:
        return None
    label = counts[0][0]
    hits = [e for e in tl.audio if e.label == label]
    opts = _options(rng, label, [[k for k, _ in counts[1:]], _audio_labels(ctx["words"])])
    return opts and ("Which of these is heard the most times?", opts, ["comparative reasoning"],
                     [(e.t0, e.t1, f"{_cap(label)} is heard, {k} so far.") for k, e in enumerate(hits, 1)])


def q_more_times(tl, rng, ctx):
    counts = Counter(e.label for e in tl.audio)
    pairs = [(x, y) for x in sorted(counts) for y in sorted(counts) if counts[x] > counts[y]]
    if not pairs:
        return None
    x, y = pairs[int(rng.integers(len(pairs)))]
    seen = Counter()
    steps = []
    for e in tl.audio:
        if e.label in (x, y):
            seen[e.label] += 1
            steps.append((e.t0, e.t1, f"{_cap(e.label)} is heard, {seen[e.label]} so far."))
    opts = _count_options(rng, counts[x] - counts[y])
    return opts and (f"How many more times is {x} heard than {y}?", opts, ["comparative reasoning"], steps)


def q_longest_on_screen(tl, rng, ctx):
    pool = sorted(_unique(_objects(tl)), key=lambda e: e.t1 - e.t0, reverse=True)[:N_OPTIONS]
    if len(pool) < 3 or (pool[0].t1 - pool[0].t0) - (pool[1].t1 - pool[1].t0) < 1.0:
        return None
    opts = _options(rng, pool[0].label, [[e.label for e in pool[1:]], ctx["catalogue"]])
    if opts is None:
        return None
    listed = sorted((e for e in pool if e.label in opts[0]), key=lambda e: e.t0)
    steps = [(e.t0, e.t1, f"{_cap(e.label)} is on screen for {format_seconds(e.t1 - e.t0)} seconds.") for e in listed]
    return "Which of these stays on screen the longest?", opts, ["comparative reasoning"], steps


TEMPLATES = (q_when_visual, q_when_audio, q_count_audio, q_count_visual, q_order_visual, q_after_audio, q_needle,
             q_on_screen_when_said, q_said_while_on_screen, q_most_heard, q_more_times, q_longest_on_screen)


def make_questions(tl: Timeline, rng: np.random.Generator, words: dict[str, list[str]], video: str) -> list[dict]:
    """MMOU items about `tl` (every template that applies; longer clips get a round per minute).

    words: the word bank by category; video: the clip's path relative to questions.json.
    """
    nouns = words["animal"] + words["object"]
    ctx = {"words": [w for ws in words.values() for w in ws], "nouns": nouns,
           "catalogue": _catalogue_labels(nouns)}
    items, asked = [], set()
    for _round in range(1 + int(tl.duration // 60)):
        for template in TEMPLATES:
            q = template(tl, rng, ctx)
            if not q or q[0] in asked:
                continue
            question, (options, pos), skills, steps = q
            asked.add(question)
            letter = LETTERS[pos]
            items.append({
                "question_id": f"{tl.clip_id}-q{len(items):02d}",
                "question": question,
                "options": dict(zip(LETTERS, options)),
                "correct_option_letter": letter,
                "question_type": skills,
                "domain": "synthetic",
                "video": video,
                "video_duration": tl.duration,
                "start_time": min(a for a, _, _ in steps),
                "end_time": max(b for _, b, _ in steps),
                "reasoning": format_reasoning(steps, f"({letter}) {options[pos]}"),
            })
    return items
