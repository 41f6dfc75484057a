"""The ground truth of a synthetic clip: a seeded timeline of visual and audio events.

Visual events are objects drawn on a plain background: coloured shapes and coloured words that
appear, stay (moving in a straight line or not; on a grid of the default model's patches in every
frame at a whole second) and disappear, plus one brief word flash (the needle). Audio events never
overlap one another: spoken words from the word bank, tones, noises and notes. About half the
objects have an audio event tied to their appearance (their colour, shape or word spoken, or a
bell); the others, and the rest of the audio, are independent.

Times are on a 0.1 s grid (frame boundaries at 10 fps); a spoken word ends at its recording's
length rounded to 0.1 s.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

FPS = 10
WIDTH, HEIGHT = 320, 240
SAMPLE_RATE = 16000

COLOURS = {"red": (230, 45, 45), "green": (50, 185, 70), "blue": (60, 110, 245), "yellow": (240, 220, 50),
           "orange": (245, 140, 30), "purple": (150, 70, 205), "pink": (245, 130, 195), "white": (245, 245, 245)}
SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon")
BACKGROUNDS = ((28, 28, 32), (36, 40, 48), (44, 36, 36))
# label -> (kind, seconds); media.synthesize_sound renders each.
SOUNDS = {"a low beep": ("tone", 0.4), "a high beep": ("tone", 0.4), "a rising sweep": ("tone", 0.7),
          "a falling sweep": ("tone", 0.7), "a burst of white noise": ("noise", 0.5), "a low rumble": ("noise", 0.9),
          "a hiss": ("noise", 0.6), "a click train": ("noise", 0.7), "a bell": ("note", 1.0),
          "a plucked string": ("note", 0.8), "a chord": ("note", 1.0), "a drum hit": ("note", 0.4)}
TIE_SOUND = "a bell"
AUDIO_GAP_S = 0.3           # silence between two audio events
MAX_VISIBLE = 3
# Objects sit on a grid of PLACE_GRID (columns, rows) cells in every frame at a whole second, the
# frames a model sampling at 1 fps sees: the default model sees a 320x240 frame as 160x128 pixels
# in 16-px patches, 10 x 8 of them, one cell each. A tiny ViT learnt shapes within a CPU budget
# only where they sat the same way on its patches (recipes/train/FINDINGS.md: 78% of shapes after
# 800 steps with objects on this grid, 21-25% at any offset, 47% on a half-patch grid).
PLACE_GRID = (10, 8)
PLACE_X, PLACE_Y = (0.2, 0.8), (0.25, 0.75)    # where centres may be, as fractions of the frame
PLACE_X_WORD = (0.3, 0.7)                       # a word is wider: MOUSE at its largest is 187 of 320 px
# Words are drawn as tall as WORD_SIZE of the frame: at 0.10-0.14 the ViT read 10% of them after
# 800 steps, at 0.16-0.22 42% (shapes 82% either way).
WORD_SIZE = (0.16, 0.22)


def shape_label(colour: str, shape: str) -> str:
    return f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {shape}"


def word_label(colour: str, word: str) -> str:
    return f"the {colour} word {word.upper()}"


def speech_label(word: str) -> str:
    return f'the word "{word}"'


@dataclass
class Event:
    id: str                 # v0, v1, ... / a0, a1, ... in order of start
    modality: str           # "visual" | "audio"
    kind: str               # visual: shape | word | flash; audio: speech | tone | noise | note
    label: str              # how questions name it
    t0: float
    t1: float
    colour: str | None = None
    shape: str | None = None
    word: str | None = None
    position: dict | None = None    # visual: centre at t0 (x0, y0) and at t1 (x1, y1), fractions of the frame
    size: float | None = None       # visual: height as a fraction of the frame height
    gain: float | None = None       # audio: peak amplitude
    tied_to: str | None = None      # audio: the visual event it announces


@dataclass
class Timeline:
    clip_id: str
    duration: float
    background: tuple[int, int, int]
    events: list[Event] = field(default_factory=list)
    fps: int = FPS
    width: int = WIDTH
    height: int = HEIGHT
    sample_rate: int = SAMPLE_RATE

    @property
    def visual(self) -> list[Event]:
        return [e for e in self.events if e.modality == "visual"]

    @property
    def audio(self) -> list[Event]:
        return [e for e in self.events if e.modality == "audio"]

    def to_json(self) -> dict:
        d = asdict(self)
        d["background"] = list(self.background)
        d["events"] = [{k: v for k, v in asdict(e).items() if v is not None} for e in self.events]
        return d

    @classmethod
    def from_json(cls, d: dict) -> Timeline:
        d = dict(d)
        d["background"] = tuple(d["background"])
        d["events"] = [Event(**e) for e in d["events"]]
        return cls(**d)


def _q(t: float) -> float:
    return round(float(t), 1)


def _free(audio: list[Event], t0: float, t1: float) -> bool:
    return all(t1 + AUDIO_GAP_S <= e.t0 or e.t1 + AUDIO_GAP_S <= t0 for e in audio)


def _audio_event(kind: str, label: str, t0: float, seconds: float, rng, word=None, tied_to=None) -> Event:
    gain = float(rng.uniform(0.55, 0.85) if kind == "speech" else rng.uniform(0.25, 0.45))
    return Event("", "audio", kind, label, _q(t0), _q(t0 + seconds), word=word, gain=round(gain, 3), tied_to=tied_to)


def _grid_path(rng, t0: float, t1: float, moving: bool, fps: int,
               place_x: tuple[float, float] = PLACE_X) -> tuple[tuple[int, int], tuple[int, int], int]:
    """A start cell and a velocity (cells a second, -1, 0 or 1 on each axis) of PLACE_GRID for an
    object on screen from t0 to t1, so that it sits on a grid point in every frame at a whole second,
    the frames a model sampling at 1 fps sees; and the first such second. Moving objects that
    cannot cross the grid in a straight line for that long stay still."""
    (cols, rows), (x_lo, x_hi), (y_lo, y_hi) = PLACE_GRID, place_x, PLACE_Y
    first = -(-round(t0 * fps) // fps)                       # the first whole second it is on screen
    steps = max(0, (round(t1 * fps) - 1) // fps - first)     # whole seconds after that one
    xs = range(math.ceil(x_lo * cols), math.floor(x_hi * cols) + 1)
    ys = range(math.ceil(y_lo * rows), math.floor(y_hi * rows) + 1)
    paths = []
    if moving:
        paths = [((x, y), (vx, vy)) for vx in (-1, 0, 1) for vy in (-1, 0, 1) if vx or vy
                 for x in xs for y in ys if x + vx * steps in xs and y + vy * steps in ys]
    if not paths:
        paths = [((x, y), (0, 0)) for x in xs for y in ys]
    start, v = paths[int(rng.integers(len(paths)))]
    return start, v, first


def _place(rng, visual: list[Event], t0: float, t1: float, moving: bool, place_x: tuple[float, float] = PLACE_X,
           fps: int = FPS) -> dict:
    """Start and end centres (at t0 and at its last frame before t1) for an object on screen from t0
    to t1, on PLACE_GRID at every whole second (`_grid_path`), away from the objects on screen then
    where a few tries allow (objects may still cross while moving)."""
    others = [(p["x0"], p["y0"]) for e in visual if e.t0 < t1 and t0 < e.t1 for p in [e.position]]
    others += [(p["x1"], p["y1"]) for e in visual if e.t0 < t1 and t0 < e.t1 for p in [e.position]]
    cols, rows = PLACE_GRID
    for _ in range(12):
        (x, y), (vx, vy), first = _grid_path(rng, t0, t1, moving, fps, place_x)
        # frame f is at x + vx (f / fps - first) cells; the video shows frames round(t0 fps) .. round(t1 fps) - 1
        at = [(f / fps - first) for f in (round(t0 * fps), round(t1 * fps) - 1)]
        (x0, y0), (x1, y1) = [((x + vx * d) / cols, (y + vy * d) / rows) for d in at]
        if all(min(math.dist((x0, y0), o), math.dist((x1, y1), o)) > 0.3 for o in others):
            break
    return {k: round(float(v), 4) for k, v in zip(("x0", "y0", "x1", "y1"), (x0, y0, x1, y1))}


def sample_timeline(clip_id: str, duration: float, rng: np.random.Generator,
                    words: dict[str, list[str]], word_seconds: dict[str, float]) -> Timeline:
    """A random timeline for a clip of `duration` seconds.

    words: the word bank's words by category (colour, shape, number, animal, object);
    word_seconds: each word's recording length.
    """
    duration = _q(duration)
    if duration < 10:
        raise ValueError(f"a synthetic clip must last at least 10 s, got {duration}")
    # A small palette per clip, so things repeat (counting, comparing) without being all alike.
    colours = list(rng.choice(list(COLOURS), size=int(rng.integers(4, 7)), replace=False))
    shapes = list(rng.choice(SHAPES, size=int(rng.integers(3, 5)), replace=False))
    nouns = words["animal"] + words["object"]
    picked = rng.choice(nouns, size=min(len(nouns), 5), replace=False)
    shown_words, flash_word = list(picked[:4]), str(picked[4])

    visual: list[Event] = []
    t = _q(rng.uniform(0.3, 2.0))
    while t + 2.5 <= duration - 0.3:
        t1 = min(_q(t + rng.uniform(2.5, 8.0)), _q(duration - 0.2))
        if sum(1 for e in visual if e.t0 < t1 and t < e.t1) >= MAX_VISIBLE:
            t = _q(t + 1.0)
            continue
        colour = str(rng.choice(colours))
        if rng.random() < 0.3:
            word = str(rng.choice(shown_words))
            e = Event("", "visual", "word", word_label(colour, word), t, t1, colour=colour, word=word.upper(),
                      size=round(float(rng.uniform(*WORD_SIZE)), 3))
        else:
            shape = str(rng.choice(shapes))
            e = Event("", "visual", "shape", shape_label(colour, shape), t, t1, colour=colour, shape=shape,
                      size=round(float(rng.uniform(0.16, 0.30)), 3))
        e.position = _place(rng, visual, t, t1, moving=rng.random() < 0.6,
                            place_x=PLACE_X_WORD if e.kind == "word" else PLACE_X)
        visual.append(e)
        t = _q(t + rng.uniform(1.0, 7.0))
    # The needle: one word flashed for about a second, somewhere in the middle.
    f0 = _q(rng.uniform(0.15, 0.85) * duration)
    f1 = _q(f0 + rng.uniform(0.6, 1.2))
    colour = str(rng.choice(colours))
    visual.append(Event("", "visual", "flash", word_label(colour, flash_word), f0, f1, colour=colour,
                        word=flash_word.upper(), size=WORD_SIZE[1],
                        position=_place(rng, visual, f0, f1, moving=False, place_x=PLACE_X_WORD)))
    visual.sort(key=lambda e: (e.t0, e.t1))
    for i, e in enumerate(visual):
        e.id = f"v{i}"

    audio: list[Event] = []
    for v in visual:                       # audio tied to an appearance
        if v.kind == "flash" or rng.random() < 0.5:
            continue
        start = v.t0 + _q(rng.uniform(0.0, 0.3))
        r = rng.random()
        if r < 0.35:
            said = v.colour
        elif r < 0.75:
            said = (v.shape or v.word).lower()
        else:
            said = None
        if said is not None and said in word_seconds:
            e = _audio_event("speech", speech_label(said), start, word_seconds[said], rng, word=said, tied_to=v.id)
        else:
            e = _audio_event(SOUNDS[TIE_SOUND][0], TIE_SOUND, start, SOUNDS[TIE_SOUND][1], rng, tied_to=v.id)
        if e.t1 <= duration and _free(audio, e.t0, e.t1):
            audio.append(e)
    vocabulary = list(rng.choice(words["number"] + nouns + words["colour"], size=10, replace=False))
    sounds = list(rng.choice(list(SOUNDS), size=6, replace=False))
    for _ in range(int(duration / 3.0)):   # independent audio
        for _attempt in range(20):
            t0 = _q(rng.uniform(0.2, duration - 1.2))
            if rng.random() < 0.45:
                word = str(rng.choice(vocabulary))
                e = _audio_event("speech", speech_label(word), t0, word_seconds[word], rng, word=word)
            else:
                label = str(rng.choice(sounds))
                e = _audio_event(SOUNDS[label][0], label, t0, SOUNDS[label][1], rng)
            if e.t1 <= duration - 0.1 and _free(audio, e.t0, e.t1):
                audio.append(e)
                break
    audio.sort(key=lambda e: e.t0)
    for i, e in enumerate(audio):
        e.id = f"a{i}"
    events = sorted(visual + audio, key=lambda e: (e.t0, e.modality, e.id))
    return Timeline(clip_id, duration, BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))], events)
