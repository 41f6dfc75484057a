"""recipes/synthetic: seeded clips that decode as their timelines say, and questions that are right."""

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from app.evaluate import MMOU_SKILLS, extract_choice, load_items, predicted_span, score
from app.timestamps import find_time_spans
from encoders.media import load_audio, probe, sample_video
from recipes.synthetic.generate import generate, is_current
from recipes.synthetic.questions import LETTERS, make_questions
from recipes.synthetic.render_wordbank import espeak_binary, render
from recipes.synthetic.timeline import COLOURS, PLACE_GRID, SOUNDS, Timeline, sample_timeline
from recipes.synthetic.media import object_box, object_place
from recipes.synthetic.wordbank import WORDBANK_DIR, load_wordbank

ROOT = Path(__file__).resolve().parent.parent
ARGS = dict(seed=3, clips=2, min_seconds=20.0, max_seconds=24.0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    items = generate(out, **ARGS)
    timelines = {p.stem: Timeline.from_json(json.loads(p.read_text())) for p in sorted((out / "timelines").glob("*.json"))}
    return out, items, timelines


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "recipes.synthetic", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_same_seed_same_bytes_through_the_cli(dataset, tmp_path):
    out, items, _ = dataset
    r = _cli("generate", "--seed", "3", "--clips", "2", "--min-seconds", "20", "--max-seconds", "24",
             "--out", str(tmp_path), "--quiet")
    assert r.returncode == 0, r.stderr
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert len([f for f in files if f.suffix == ".mp4"]) == 2
    for f in files:
        assert (out / f).read_bytes() == (tmp_path / f).read_bytes(), f
    # another seed gives other clips; clip 0 does not depend on how many clips are made
    other = generate(tmp_path / "other", seed=4, clips=1, min_seconds=20.0, max_seconds=24.0)
    assert [i["question"] for i in other] != [i["question"] for i in items if i["question_id"].startswith("s3-c00000")]
    one = generate(tmp_path / "one", seed=3, clips=1, min_seconds=20.0, max_seconds=24.0)
    assert one == [i for i in items if i["question_id"].startswith("s3-c00000-")]


def test_a_folder_from_another_generator_is_not_current(dataset, tmp_path):
    """Cached clips are reused only if this generator would make them: the training data and the
    held-out sets of a run made before a generator change are made again."""
    out, _, _ = dataset
    bank = load_wordbank()
    assert is_current(out, 3, 0, 20.0, 24.0, bank) and is_current(out, 3, 1, 20.0, 24.0, bank)
    assert not is_current(out, 3, 2, 20.0, 24.0, bank)                  # never made
    assert not is_current(out, 3, 0, 30.0, 34.0, bank)                  # other lengths
    old = tmp_path / "old"
    (old / "timelines").mkdir(parents=True)
    tl = json.loads((out / "timelines" / "s3-c00000.json").read_text())
    moved = next(e for e in tl["events"] if e["modality"] == "visual")
    moved["position"]["x0"] += 0.01                                     # as an earlier placement put it
    (old / "timelines" / "s3-c00000.json").write_text(json.dumps(tl))
    assert not is_current(old, 3, 0, 20.0, 24.0, bank)


def test_a_model_sampling_at_1_fps_sees_the_whole_seconds(dataset):
    """Clips last whole seconds, so the 1-fps sampler (spreading its frames evenly over the clip)
    takes the frames at whole seconds, those in which objects sit on the patch grid."""
    from encoders.media import sample_indices

    _, _, timelines = dataset
    for tl in timelines.values():
        assert tl.duration == int(tl.duration)
        frames = round(tl.duration * tl.fps)
        assert sample_indices(frames, tl.fps, fps=1.0) == [s * tl.fps for s in range(int(tl.duration))]


def test_objects_sit_on_the_patch_grid_in_every_sampled_frame():
    """At every whole second an object is on screen, its centre is a point of PLACE_GRID (the
    default model's patches) and all of it is in the frame; moving objects move one cell a second,
    so about half still move."""
    bank = load_wordbank()
    rng = np.random.default_rng(11)
    cols, rows = PLACE_GRID
    moving = objects = sampled = 0
    for k in range(12):
        tl = sample_timeline(f"g{k}", float(rng.uniform(20, 180)), rng, bank.categories, bank.word_seconds)
        for e in tl.visual:
            p = e.position
            objects += 1
            moving += (p["x0"], p["y0"]) != (p["x1"], p["y1"])
            for second in range(int(tl.duration) + 1):
                at = object_place(tl, e, second * tl.fps)
                if at is None:
                    continue
                x, y = at[0] / tl.width * cols, at[1] / tl.height * rows
                assert abs(x - round(x)) < 1e-3 and abs(y - round(y)) < 1e-3, (tl.clip_id, e.label, second, x, y)
                assert 2 <= round(x) <= 8 and 2 <= round(y) <= 6          # inside PLACE_X, PLACE_Y
                left, top, right, bottom = object_box(tl, e, second * tl.fps)
                assert 0 <= left and right <= tl.width and 0 <= top and bottom <= tl.height, (e.label, e.size)
                sampled += 1
    assert sampled > 500 and 0.35 < moving / objects < 0.65, (moving, objects)


@pytest.mark.parametrize("args, message", [
    (["--clips", "0"], "--clips must be between 1"),
    (["--clips", "1", "--min-seconds", "30", "--max-seconds", "20"], "--min-seconds <= --max-seconds"),
    (["--clips", "1", "--min-seconds", "2", "--max-seconds", "5"], "10 <= --min-seconds"),
])
def test_cli_bad_arguments(tmp_path, args, message):
    r = _cli("generate", "--out", str(tmp_path / "x"), "--quiet", *args)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and message in r.stderr, r.stderr


def test_real_container_with_both_tracks(dataset):
    out, _, timelines = dataset
    for cid, tl in timelines.items():
        info = probe(out / "clips" / f"{cid}.mp4")
        assert (info.video_codec, info.audio_codec) == ("h264", "aac")
        assert (info.width, info.height, info.avg_fps, info.sample_rate, info.channels) == (320, 240, 10.0, 16000, 1)
        assert info.num_frames == round(tl.duration * tl.fps)
        assert info.duration == pytest.approx(tl.duration, abs=0.1)
        assert 20.0 <= tl.duration <= 24.0


def _drawn_over(tl, e, frame):
    """Is anything drawn on top of event e at this frame (visible and later in drawing order)?"""
    later = tl.visual[tl.visual.index(e) + 1:]
    return any(round(o.t0 * tl.fps) <= frame < round(o.t1 * tl.fps) for o in later)


def test_video_shows_the_timeline(dataset):
    out, _, timelines = dataset
    checked = 0
    for cid, tl in timelines.items():
        clip = sample_video(out / "clips" / f"{cid}.mp4", fps=10.0)
        frames = clip.frames.numpy().astype(int)
        assert len(frames) == round(tl.duration * tl.fps)
        bg = np.array(tl.background)
        for e in tl.visual:
            if e.kind != "shape":
                continue
            f0, f1 = round(e.t0 * tl.fps), round(e.t1 * tl.fps)
            for frame, (x, y) in ((f0, (e.position["x0"], e.position["y0"])),
                                  (f1 - 1, (e.position["x1"], e.position["y1"]))):
                if _drawn_over(tl, e, frame):
                    continue
                px, py = round(x * tl.width), round(y * tl.height)
                seen = frames[frame, py - 1:py + 2, px - 1:px + 2].reshape(-1, 3).mean(0)
                assert np.abs(seen - COLOURS[e.colour]).max() < 40, (cid, e.label, frame, seen)
                checked += 1
        empty = [i for i in range(len(frames)) if not any(round(e.t0 * tl.fps) <= i < round(e.t1 * tl.fps)
                                                           for e in tl.visual)]
        for i in empty:
            assert np.abs(frames[i] - bg).max() < 12, (cid, i)
    assert checked >= 6


def test_audio_follows_the_timeline(dataset):
    out, _, timelines = dataset
    bank = load_wordbank()
    sr = 16000
    for cid, tl in timelines.items():
        audio = load_audio(out / "clips" / f"{cid}.mp4").numpy()
        assert len(audio) == round(tl.duration * sr)
        events = tl.audio
        assert {e.kind for e in events} >= {"speech"} and len(events) >= 5
        quiet = np.ones(len(audio), bool)
        for e in events:
            a, b = round(e.t0 * sr), round(e.t1 * sr)
            quiet[max(0, a - 800):b + 800] = False
            assert np.sqrt(np.mean(audio[a:b] ** 2)) > 0.02, (cid, e.label)
            if e.kind == "speech":           # the word's recording sits at t0 (to 5 ms)
                ref = bank.audio(e.word)
                lo = max(0, a - 800)
                seg = audio[lo:a + len(ref) + 800]
                corr = np.correlate(seg, ref, mode="valid")
                assert abs(lo + int(np.argmax(corr)) - a) <= 80, (cid, e.label)
            if e.label in ("a low beep", "a high beep"):
                spectrum = np.abs(np.fft.rfft(audio[a:b]))
                peak = np.argmax(spectrum) * sr / (b - a)
                assert peak == pytest.approx(330 if e.label == "a low beep" else 1320, rel=0.03)
        assert np.abs(audio[quiet]).max() < 0.01       # silence between events


def test_questions_are_well_formed_and_their_targets_score_perfectly(dataset):
    out, items, timelines = dataset
    assert len(items) >= 12
    assert json.loads((out / "questions.json").read_text()) == items
    loaded = load_items(out / "questions.json")
    for raw, item in zip(items, loaded):
        assert list(raw["options"]) == list(LETTERS)
        assert len(set(raw["options"].values())) == 10 and all(v.strip() for v in raw["options"].values())
        assert raw["correct_option_letter"] in LETTERS
        assert raw["question_type"] and set(raw["question_type"]) <= set(MMOU_SKILLS)
        assert raw["domain"] == "synthetic" and (out / raw["video"]).is_file()
        tl = timelines[Path(raw["video"]).stem]
        assert raw["video_duration"] == tl.duration
        assert 0 <= raw["start_time"] <= raw["end_time"] <= tl.duration
        think, answer = raw["reasoning"].split("\n</think>\n")
        assert think.startswith("<think>\n")
        for line in think[len("<think>\n"):].split("\n"):
            assert re.fullmatch(r"<t>\d+\.\d\d?-\d+\.\d\d?</t> \S.*", line), line
        assert answer == f"({raw['correct_option_letter']}) {raw['options'][raw['correct_option_letter']]}"
        assert predicted_span(raw["reasoning"], tl.duration) == (raw["start_time"], raw["end_time"])
        assert extract_choice(raw["reasoning"], raw["options"]) == raw["correct_option_letter"]
        assert item.span == (raw["start_time"], raw["end_time"])
    m = score(loaded, {i["question_id"]: i["reasoning"] for i in items})
    assert m["accuracy"] == 1.0 and m["miou"] == 1.0 and m["r1_iou_0.7"] == 1.0


def _right(item):
    return item["options"][item["correct_option_letter"]]


def check_against_timeline(item, tl: Timeline) -> bool:
    """Recompute the answer of the templates whose question names what to look up. True if checked."""
    q, right = item["question"], _right(item)
    if m := re.fullmatch(r"How many times is this (?:spoken|heard): (.+)\?", q):
        assert int(right) == sum(e.label == m.group(1) for e in tl.audio)
    elif m := re.fullmatch(r"When is this on screen: (.+)\?", q):
        [e] = [e for e in tl.visual if e.label == m.group(1)]
        assert [(s.start_s, s.end_s) for s in find_time_spans(right)] == [(e.t0, e.t1)]
    elif m := re.fullmatch(r"What is heard right after this: (.+)\?", q):
        audio = tl.audio
        [k] = [k for k, e in enumerate(audio) if e.label == m.group(1)]
        assert right == audio[k + 1].label
    elif q.startswith("At one moment a word flashes"):
        assert right == [e.word for e in tl.visual if e.kind == "flash"][0]
    elif m := re.fullmatch(r"What is on screen when this is spoken: (.+)\?", q):
        [w] = [e for e in tl.audio if e.label == m.group(1)]
        assert [o.label for o in tl.visual if o.t0 < w.t1 and w.t0 < o.t1] == [right]
    elif m := re.fullmatch(r"In what order do these first appear on screen: (.+)\?", q):
        names = m.group(1).split("; ")
        first = {n: min(e.t0 for e in tl.visual if e.label == n) for n in names}
        assert right == ", then ".join(sorted(names, key=first.get))
    elif m := re.fullmatch(r"How many more times is (.+) heard than (.+)\?", q):
        counts = Counter(e.label for e in tl.audio)
        assert int(right) == counts[m.group(1)] - counts[m.group(2)] and counts[m.group(2)] >= 1
    elif q == "Which of these stays on screen the longest?":
        shown = {e.label: e.t1 - e.t0 for e in tl.visual if e.label in item["options"].values()}
        assert max(shown, key=shown.get) == right
    elif q == "Which of these is heard the most times?":
        counts = Counter(e.label for e in tl.audio if e.label in item["options"].values())
        assert counts.most_common(2)[0][0] == right and counts.most_common(2)[0][1] > counts.most_common(2)[1][1]
    else:
        return False
    return True


def test_answers_agree_with_the_timeline(dataset):
    _, items, timelines = dataset
    checked = sum(check_against_timeline(i, timelines[Path(i["video"]).stem]) for i in items)
    assert checked >= 10


def test_many_clips_cover_the_skills_with_uniform_letters():
    """Questions only (no media), for 120 timelines of 20 s to 3 min."""
    bank = load_wordbank()
    seconds = bank.word_seconds
    letters, skills, checked = Counter(), Counter(), 0
    for k in range(120):
        rng = np.random.default_rng([99, k])
        tl = sample_timeline(f"t{k}", float(rng.uniform(20, 180)), rng, bank.categories, seconds)
        for item in make_questions(tl, rng, bank.categories, f"clips/t{k}.mp4"):
            letters[item["correct_option_letter"]] += 1
            skills.update(item["question_type"])
            assert len(set(item["options"].values())) == 10
            assert predicted_span(item["reasoning"], tl.duration) == (item["start_time"], item["end_time"])
            checked += check_against_timeline(item, tl)
    n = sum(letters.values())
    assert n >= 1500 and checked >= n // 2
    assert all(abs(letters[c] - n / 10) < 0.25 * n / 10 for c in LETTERS), letters
    wanted = {"temporal understanding", "counting", "sequential reasoning", "needle-in-the-haystack",
              "audio-visual stitching", "comparative reasoning"}
    assert set(skills) == wanted and min(skills.values()) >= 100, skills


def test_timeline_mixes_tied_and_independent_audio(dataset):
    _, _, timelines = dataset
    audio = [e for tl in timelines.values() for e in tl.audio]
    assert any(e.tied_to for e in audio) and any(not e.tied_to for e in audio)
    assert {e.kind for e in audio} >= {"speech", "tone", "noise", "note"} or len(audio) < 20
    for tl in timelines.values():
        spans = sorted((e.t0, e.t1) for e in tl.audio)
        assert all(b1 <= a2 for (_, b1), (a2, _) in zip(spans, spans[1:]))       # audio events never overlap
        assert sum(e.kind == "flash" for e in tl.visual) == 1
        assert all(e.label in SOUNDS or e.kind == "speech" for e in tl.audio)


def test_shipped_wordbank():
    bank = load_wordbank()
    assert len(bank.words) >= 40 and len(set(bank.words)) == len(bank.words)
    assert {"colour", "shape", "number", "animal", "object"} <= set(bank.categories)
    assert set(COLOURS) <= set(bank.categories["colour"])
    size = sum(p.stat().st_size for p in WORDBANK_DIR.iterdir())
    assert size < 3 * 2**20
    for w in bank.words:
        x = bank.audio(w)
        assert 0.2 <= len(x) / bank.sample_rate <= 1.5 and np.abs(x).max() > 0.5, w
    assert "espeak-ng" in (WORDBANK_DIR / "README.md").read_text()


@pytest.mark.skipif(espeak_binary() is None, reason="espeak-ng is not installed")
def test_render_wordbank(tmp_path):
    m = render(tmp_path, words={"animal": ["cat"], "number": ["seven"]})
    assert [w["word"] for w in m["words"]] == ["cat", "seven"]
    bank = load_wordbank(tmp_path)
    assert bank.sample_rate == 16000 and bank.categories == {"animal": ["cat"], "number": ["seven"]}
    x = bank.audio("seven")
    assert 0.2 < len(x) / 16000 < 1.5 and np.abs(x).max() == pytest.approx(10 ** (-1 / 20), abs=0.01)
