"""Generating a synthetic data set: clips (mp4), their timelines, and MMOU-format questions.json.

Clip `i` of seed `S` depends only on (S, i): its length, timeline, audio and questions come from
their own seeded streams, so a data set can be regenerated or extended clip by clip.

    DIR/questions.json           MMOU items (plus `reasoning`), all clips
    DIR/clips/s{S}-c{i}.mp4      H.264 + AAC
    DIR/timelines/s{S}-c{i}.json the ground truth the questions were made from
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from recipes.synthetic.media import mix_audio, write_clip
from recipes.synthetic.questions import make_questions
from recipes.synthetic.timeline import Timeline, sample_timeline
from recipes.synthetic.wordbank import WordBank, load_wordbank

MIN_SECONDS, MAX_SECONDS = 10.0, 3600.0
MAX_CLIPS = 100_000


def clip_id(seed: int, index: int) -> str:
    return f"s{seed}-c{index:05d}"


def check_arguments(seed: int, clips: int, min_seconds: float, max_seconds: float) -> None:
    if seed < 0:
        raise ValueError(f"--seed must be >= 0, got {seed}")
    if not 1 <= clips <= MAX_CLIPS:
        raise ValueError(f"--clips must be between 1 and {MAX_CLIPS}, got {clips}")
    if not MIN_SECONDS <= min_seconds <= max_seconds <= MAX_SECONDS:
        raise ValueError(f"need {MIN_SECONDS:g} <= --min-seconds <= --max-seconds <= {MAX_SECONDS:g}, "
                         f"got {min_seconds:g} and {max_seconds:g}")


def clip_timeline(seed: int, index: int, min_seconds: float, max_seconds: float, bank: WordBank) -> Timeline:
    """The timeline of clip `index` of `seed` (its length and every event): what the clip shows. It
    lasts whole seconds, so a model sampling it at 1 fps (encoders.media.sample_indices: n frames
    spread evenly over the clip) takes the frames at whole seconds, where objects sit on the grid."""
    duration = float(round(np.random.default_rng([seed, index, 0]).uniform(min_seconds, max_seconds)))
    return sample_timeline(clip_id(seed, index), duration, np.random.default_rng([seed, index, 1]), bank.categories,
                           bank.word_seconds)


def is_current(out: Path, seed: int, index: int, min_seconds: float, max_seconds: float, bank: WordBank) -> bool:
    """Whether `out` holds clip `index` of `seed` as this generator makes it: a folder written by an
    earlier version of the generator (other placements, other events) must be made again, not reused."""
    path = Path(out) / "timelines" / f"{clip_id(seed, index)}.json"
    return path.exists() and json.loads(path.read_text()) == json.loads(
        json.dumps(clip_timeline(seed, index, min_seconds, max_seconds, bank).to_json()))


def generate_clip(out: Path, seed: int, index: int, min_seconds: float, max_seconds: float,
                  bank: WordBank) -> list[dict]:
    """Write clip `index` (mp4 and timeline) under `out`; return its questions."""
    cid = clip_id(seed, index)
    words = bank.categories
    timeline = clip_timeline(seed, index, min_seconds, max_seconds, bank)
    audio = mix_audio(timeline, bank, np.random.default_rng([seed, index, 2]))
    video = f"clips/{cid}.mp4"
    write_clip(out / video, timeline, audio)
    (out / "timelines" / f"{cid}.json").write_text(json.dumps(timeline.to_json(), indent=1) + "\n")
    return make_questions(timeline, np.random.default_rng([seed, index, 3]), words, video)


def generate(out, seed: int, clips: int, min_seconds: float, max_seconds: float, progress: bool = False) -> list[dict]:
    """Generate `clips` clips into folder `out` and write out/questions.json; return the items."""
    from tqdm import tqdm

    check_arguments(seed, clips, min_seconds, max_seconds)
    out = Path(out)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    (out / "timelines").mkdir(exist_ok=True)
    bank = load_wordbank()
    items = []
    for index in tqdm(range(clips), desc="clips", unit="clip", file=sys.stderr, disable=not progress):
        items += generate_clip(out, seed, index, min_seconds, max_seconds, bank)
    (out / "questions.json").write_text(json.dumps(items, indent=1) + "\n")
    return items
