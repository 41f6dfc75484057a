"""Training data: synthetic clips, their towers' inputs cached once, and the training items.

Clips come from the synthetic generator (recipes/synthetic), clip by clip from the run's seed,
in length bands. Each clip is read exactly as `python -m app eval` and a live session read it
(app.evaluate.media_chunks: video at 1 fps in 2-frame tubelets with their frame labels, audio in
2 s chunks with their time labels, in time order), except that what is trained is left out: the
vision tower's input patches and the inputs of `sound_projection` (the frozen conformer's output)
are cached per clip (`features/<clip>.tower-inputs.safetensors` and the chunk list in
`features/<clip>.json`), so training runs the vision tower, the sound projector and the decoder.

A training example is a clip with its questions (MMOU items; the target is the item's TA-CoT
`reasoning`) plus one timeline item that lists every event of the clip with its time span:
dense supervision for what is seen and heard, and when.

Each chunk is followed by its caption (`(heard: a bell) `, `(seen: a pink star) `), which the
model learns to write: the model narrates its stream (fusion.stream.Narration), and at inference
writes these captions itself as chunks arrive. The questions alone never made the decoder read
the media (in a first run the loss with another clip's media in place was the same); a caption
right after its chunk is a local signal it learns from at once, and the questions then read text.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from app.evaluate import audio_chunks, question_prompt, parse_item, video_chunks
from app.timestamps import format_reasoning, format_seconds, format_step
from fusion.stream import EmbeddingChunk, Narration

from .config import NARRATION as NARRATION_CONFIG

TIMELINE_QUESTION = "What happens in this clip? List every thing seen and heard, with its time span."


# ---------------------------------------------------------------------------------------------
# clips and features
# ---------------------------------------------------------------------------------------------

def clip_features(vision, audio, path, fps: float, audio_clip_s: float):
    """The chunk list of a clip (app.evaluate's layout, EVS off), the vision tower's inputs for its
    tubelets (patches (tubelets, gh * gw, tubelet patch dim), and the grid) and the audio projector's
    inputs (tokens, conformer width). The ViT is trained, so its pixels are cached; the conformer
    stays frozen, so its outputs are."""
    from encoders import media

    got, grids = [], set()

    def vision_input(module, args, kwargs):
        got.append(args[0].detach().to(torch.float16))
        grids.add(tuple(args[1]))

    hook = vision.register_forward_pre_hook(vision_input, with_kwargs=True)
    try:
        vchunks = video_chunks(vision, media.iter_video_frames(path, fps=fps), vision.cfg.temporal_patch_size)
    finally:
        hook.remove()
    agot = []
    hook = audio.projection.register_forward_hook(lambda m, args, out: agot.append(args[0].detach().clone()))
    try:
        achunks = audio_chunks(audio, media.load_audio(path), audio_clip_s)
    finally:
        hook.remove()
    patches = torch.cat(got)
    audio_feats = [x for batch in agot for x in batch]
    if patches.shape[0] != len(vchunks) or len(grids) != 1 or [len(x) for x in audio_feats] != [c.num_tokens for c in achunks]:
        raise RuntimeError(f"{path}: the captured tower inputs do not match the chunks")
    chunks = sorted(vchunks + achunks, key=lambda c: c.sort_key())
    meta = [{"modality": c.modality, "t0": c.t0, "t1": c.t1, "label": c.label, "seq": c.seq, "n": c.num_tokens}
            for c in chunks]
    return meta, patches, grids.pop(), torch.cat(audio_feats)


_WORKER = {}


def _worker_init(seed: int, vocab_size: int, threads: int):
    from .model import new_model
    torch.set_num_threads(threads)
    _, _, vision, audio = new_model(seed, vocab_size)
    _WORKER.update(vision=vision, audio=audio)


def _make_clip(job) -> list[dict]:
    """Generate one clip (mp4, timeline, questions) and cache its features; returns its items."""
    from recipes.synthetic.generate import clip_id, generate_clip, is_current
    from recipes.synthetic.wordbank import load_wordbank

    out, seed, index, lo, hi, fps, audio_clip_s = job
    out = Path(out)
    cid = clip_id(seed, index)
    items_path = out / "items" / f"{cid}.json"
    feat_path = out / "features" / f"{cid}.tower-inputs.safetensors"
    bank = load_wordbank()
    made = items_path.exists() and is_current(out, seed, index, lo, hi, bank)   # by an earlier run, this generator
    if made and feat_path.exists():
        return json.loads(items_path.read_text())
    if made and (out / "clips" / f"{cid}.mp4").exists():   # clip made before, inputs not cached
        items = json.loads(items_path.read_text())
    else:
        items = generate_clip(out, seed, index, lo, hi, bank)
    with torch.inference_mode():
        meta, patches, grid, audio = clip_features(_WORKER["vision"], _WORKER["audio"], out / f"clips/{cid}.mp4",
                                                   fps, audio_clip_s)
    save_file({"video_patches": patches.contiguous(), "audio": audio.contiguous()}, str(feat_path),
              metadata={"grid": json.dumps(list(grid))})
    (out / "features" / f"{cid}.json").write_text(json.dumps(meta) + "\n")
    items_path.write_text(json.dumps(items) + "\n")
    return items


def make_clips(out, seed: int, bands, model_seed: int, vocab_size: int, fps: float, audio_clip_s: float,
               workers: int = 2, first_index: int = 0, desc: str = "clips") -> list[dict]:
    """Clips of `bands` [(min s, max s, count), ...] from `seed` (clip i of the seed, i counted over
    the bands from `first_index`), generated and encoded by `workers` processes; their items."""
    from tqdm import tqdm

    out = Path(out)
    for sub in ("clips", "timelines", "features", "items"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    jobs, index = [], first_index
    for lo, hi, count in bands:
        for _ in range(int(count)):
            jobs.append((str(out), seed, index, float(lo), float(hi), fps, audio_clip_s))
            index += 1
    items: list[dict] = []
    bar = dict(total=len(jobs), desc=desc, unit="clip", file=sys.stderr)
    if workers <= 0:                     # in this process (tests, debugging)
        threads = torch.get_num_threads()
        _worker_init(model_seed, vocab_size, threads)
        try:
            for job in tqdm(jobs, **bar):
                items += _make_clip(job)
        finally:
            torch.set_num_threads(threads)
        return items
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_worker_init, initargs=(model_seed, vocab_size, 1)) as pool:
        for got in tqdm(pool.map(_make_clip, jobs), **bar):
            items += got
    return items


# ---------------------------------------------------------------------------------------------
# training examples
# ---------------------------------------------------------------------------------------------

@dataclass
class Clip:
    """One clip's cached features and chunk list, and its training items."""

    clip_id: str
    duration: float
    meta: list[dict]
    video: torch.Tensor          # the ViT's inputs: (tubelets, gh * gw, tubelet patch dim), fp16
    grid: tuple[int, int]        # (gh, gw) patches of a frame
    audio: torch.Tensor          # the audio projector's inputs: (tokens, conformer width)
    items: list[dict]            # MMOU items, `reasoning` the target
    timeline: dict

    def chunks(self, video_embeds: torch.Tensor, audio_embeds: torch.Tensor, keep: torch.Tensor | None = None):
        """EmbeddingChunks of the session with these projected embeddings (video (tubelets, tokens, D),
        audio (tokens, D)); `keep` (tubelets, tokens) is an EVS mask."""
        out, a = [], 0
        for m in self.meta:
            if m["modality"] == "video":
                e = video_embeds[m["seq"]]
                if keep is not None:
                    e = e[keep[m["seq"]]]
            else:
                e = audio_embeds[a:a + m["n"]]
                a += m["n"]
            out.append(EmbeddingChunk("", m["modality"], m["t0"], m["t1"], m["label"], e, m["seq"]))
        return out


def load_clip(folder, clip_id: str, items: list[dict]) -> Clip:
    folder = Path(folder)
    path = folder / "features" / f"{clip_id}.tower-inputs.safetensors"
    feats = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        grid = tuple(json.loads(f.metadata()["grid"]))
    meta = json.loads((folder / "features" / f"{clip_id}.json").read_text())
    timeline = json.loads((folder / "timelines" / f"{clip_id}.json").read_text())
    return Clip(clip_id, timeline["duration"], meta, feats["video_patches"], grid, feats["audio"], items, timeline)


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def timeline_steps(timeline: dict) -> list[tuple[float, float, str]]:
    """Every event of a timeline as a reasoning step, in the generator's own words."""
    steps = []
    for e in sorted(timeline["events"], key=lambda e: (e["t0"], e["t1"], e["id"])):
        if e["modality"] == "visual":
            text = f"The word {e['word']} flashes on screen." if e["kind"] == "flash" else f"{_cap(e['label'])} is on screen."
        else:
            text = f"{_cap(e['label'])} is {'spoken' if e['kind'] == 'speech' else 'heard'}."
        steps.append((e["t0"], e["t1"], text))
    return steps


NARRATION = Narration.from_dict(NARRATION_CONFIG, "recipes.train.config.NARRATION")


def chunk_caption(timeline: dict, chunk: dict, narration: Narration | None = None) -> str:
    """What a chunk (a `meta` entry) holds, in the generator's words, each thing with its time span
    (`(seen from second 2: a pink star 3.1-7.4) `), the events of `caption_events`. A question's time
    span is then a copy of the asked thing's caption, which a small decoder learns; without spans in
    the captions it never did. `narration`: the recipe's (config.NARRATION) unless given."""
    return (narration or NARRATION).caption(chunk["modality"], chunk_things(timeline, chunk), chunk["t0"])


def chunk_things(timeline: dict, chunk: dict) -> list[str]:
    """What a chunk's caption names: each of its `caption_events` with its time span (`a pink star 3.1-7.4`)."""
    return [f"{e['label']} {format_seconds(e['t0'])}-{format_seconds(e['t1'])}" for e in caption_events(timeline, chunk)]


def caption_events(timeline: dict, chunk: dict) -> list[dict]:
    """The events a chunk's caption names, in order: the audio events centred in its span, or the
    visual events on screen in either frame of its tubelet."""
    events = timeline["events"]
    if chunk["modality"] == "audio":
        return [e for e in events if e["modality"] == "audio" and chunk["t0"] <= (e["t0"] + e["t1"]) / 2 < chunk["t1"]]
    return [e for e in events if e["modality"] == "visual" and any(e["t0"] <= t < e["t1"] for t in (chunk["t0"], chunk["t1"]))]


def lookup_rows(timeline: dict) -> list[tuple[str, str, str]]:
    """(key, question, target) of "When is X ...?" (no options) for every event the generator's
    when-questions can ask about: dense supervision of the lookup every question needs (a clip's
    dozen questions ask for about one; the lookup appeared only with a row per event)."""
    from recipes.synthetic.questions import when_pool, when_question
    from recipes.synthetic.timeline import Timeline

    tl = Timeline.from_json(timeline)
    rows = []
    for e in when_pool(tl, "visual") + when_pool(tl, "audio"):
        question, step, answer = when_question(e)
        rows.append((f"{tl.clip_id}/when/{e.id}", question, format_reasoning([step], answer)[len("<think>\n"):]))
    return rows


def chunk_holding(own: list[dict], t: float) -> int:
    """The index, in `own` (one modality's chunks, in order), of the chunk second `t` falls in: the
    last one starting at or before `t` (the first, for a `t` before them all)."""
    return next((k for k, after in enumerate(own[1:]) if t < after["t0"]), len(own) - 1)


def quoted_chains(timeline: dict, chunks: list[dict]) -> dict[str, tuple[list[str], str]]:
    """{question: (reasoning lines, answer's text)} of every question the generator can ask that
    chains two lookups (recipes.synthetic.questions.chain_pool), read through the captions of the
    session's `chunks`: the first step, then each caption the second lookup reads, quoted as
    `chunk_caption` writes it, then the second step.

        <t>29.0-29.5</t> The word "yellow" is heard.
        (heard from second 28: the word "yellow" 29.0-29.5)
        (heard from second 30: a falling sweep 30.0-30.7)
        <t>30.0-30.7</t> Next, a falling sweep is heard.

    With captions keyed by their second each quoted line is one lookup of an exact key; the two
    steps alone (the generator's reasoning) left the second lookup unlearnt (FINDINGS). "After X"
    reads the audio chunks from X's to the next sound's, "on screen when X is spoken" the tubelet
    that shows the object as the word is said, "spoken while X is on screen" the audio chunks from
    the object's appearance to the word's. A said-question whose object no tubelet at the word
    shows (the word falls between tubelets) is left out."""
    from recipes.synthetic.questions import after_pool, after_question, said_pool, said_question, while_pool, while_question
    from recipes.synthetic.timeline import Timeline

    tl = Timeline.from_json(timeline)
    audio = [c for c in chunks if c["modality"] == "audio"]
    video = [c for c in chunks if c["modality"] == "video"]

    def quote(chunk: dict) -> str:
        return chunk_caption(timeline, chunk).rstrip()

    def heard_between(t_from: float, t_to: float) -> list[str]:
        return [quote(c) for c in audio[chunk_holding(audio, t_from):chunk_holding(audio, t_to) + 1]]

    def chain(made, quoted: list[str]) -> tuple[str, tuple[list[str], str]]:
        question, steps, answer = made
        return question, ([format_step(*steps[0]), *quoted, format_step(*steps[1])], answer)

    out = dict(chain(after_question(a, b), heard_between((a.t0 + a.t1) / 2, (b.t0 + b.t1) / 2))
               for a, b in after_pool(tl))
    for w, o in said_pool(tl):
        shown = [c for c in (video[chunk_holding(video, t)] for t in (w.t0, math.ceil(w.t0), w.t1))
                 if any(e["id"] == o.id for e in caption_events(timeline, c))]
        if shown:
            out.update([chain(said_question(w, o), [quote(shown[0])])])
    out.update(chain(while_question(o, w), heard_between(o.t0, (w.t0 + w.t1) / 2)) for o, w in while_pool(tl))
    return out


def chain_rows(timeline: dict, chunks: list[dict]) -> list[tuple[str, str, str]]:
    """(key, question, target) of every chained question (`quoted_chains`) with no options: its
    reasoning through the captions it reads, then the answer's text. `lookup_rows` teaches the
    first lookup; these teach the second."""
    return [(f"{timeline['clip_id']}/chain/{k}", question, "\n".join(lines) + "\n</think>\n" + answer)
            for k, (question, (lines, answer)) in enumerate(quoted_chains(timeline, chunks).items())]


def route_chains(timeline: dict, chunks: list[dict], items: list[dict]) -> list[dict]:
    """`items` with each chained question's reasoning read through the captions (`quoted_chains`),
    its answer line kept; the other items as they are."""
    chains, out = quoted_chains(timeline, chunks), []
    for it in items:
        if it["question"] in chains:
            answer_line = it["reasoning"].rpartition("</think>\n")[2]
            it = {**it, "reasoning": "<think>\n" + "\n".join(chains[it["question"]][0]) + "\n</think>\n" + answer_line}
        out.append(it)
    return out


WINDOW_QUESTIONS = {"audio": "What is heard in the chunk from this second", "video": "What is on screen in the chunk from this second"}


def window_rows(timeline: dict, chunks: list[dict]) -> list[tuple[str, str, str]]:
    """(key, question, target) asking what each chunk holds by its start second (`What is heard in
    the chunk from this second: 30?`): its caption quoted, then what it holds. The lookup by second
    each quoted line of `quoted_chains` makes, asked directly."""
    rows = []
    for c in chunks:
        things = "; ".join(chunk_things(timeline, c)) or "nothing"
        rows.append((f"{timeline['clip_id']}/window/{c['modality']}/{c['seq']}",
                     f"{WINDOW_QUESTIONS[c['modality']]}: {int(round(c['t0']))}?",
                     chunk_caption(timeline, c).rstrip() + "\n</think>\n" + things))
    return rows


def timeline_target(timeline: dict) -> str:
    """The timeline item's answer: every event, then how many were seen and heard."""
    seen = sum(e["modality"] == "visual" for e in timeline["events"])
    heard = len(timeline["events"]) - seen
    return format_reasoning(timeline_steps(timeline), f"{seen} things are seen and {heard} sounds are heard.")


def prompt_and_target(item: dict, answer: str = "letter") -> tuple[str, str]:
    """(user question text, assistant text after the generation prompt `<think>\\n`) of an item.
    The item's reasoning ends `</think>\\n(C) option text`; with answer="text" the letter is left out."""
    reasoning = item["reasoning"]
    if not reasoning.startswith("<think>\n"):
        raise ValueError(f"item {item.get('question_id')}: reasoning does not start with '<think>\\n'")
    target = reasoning[len("<think>\n"):]
    if answer == "text":
        head, sep, tail = target.rpartition("</think>\n")
        letter = f"({item['correct_option_letter']}) "
        if not sep or not tail.startswith(letter):
            raise ValueError(f"item {item.get('question_id')}: the answer does not start with {letter!r}")
        target = head + sep + tail[len(letter):]
    elif answer != "letter":
        raise ValueError(f"answer must be 'letter' or 'text', got {answer!r}")
    return question_prompt(parse_item(item, "training item")), target


def timeline_prompt_and_target(timeline: dict) -> tuple[str, str]:
    return TIMELINE_QUESTION, timeline_target(timeline)[len("<think>\n"):]


def corpus_texts(items: list[dict], timelines: list[dict]) -> list[str]:
    """What the tokenizer is trained on: questions with their options, targets, and every label."""
    from fusion.prompt import question_tail, stream_header
    from fusion.stream import audio_chunk_label
    from app.encoder_service import frame_label

    texts = [stream_header(), question_tail(TIMELINE_QUESTION)]
    for it in items:
        q, t = prompt_and_target(it)
        texts += [question_tail(q), t]
    for tl in timelines:
        texts.append(timeline_target(tl))
        texts += [chunk_caption(tl, {"modality": m, "t0": float(t), "t1": t + 1.0})
                  for m in ("video", "audio") for t in range(int(tl["duration"]))]
    for k in range(0, 400, 2):          # frame and audio labels over 6 minutes and more
        texts.append(frame_label([k + 1, k + 2], [k / 1.0, k + 1.0]))
        texts.append(audio_chunk_label(float(k), float(k + 2)))
    return texts
