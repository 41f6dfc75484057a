"""Scoring MMOU-format multiple-choice items: accuracy per skill and grounding of the reasoning.

An item (MMOU fields): question_id, question, options {"A": ..., "J": ...}, correct_option_letter,
question_type [skills], domain, video, video_duration, start_time, end_time (the evidence span,
seconds; may be absent), plus this project's `reasoning` (the canonical TA-CoT target).

A prediction is the model's whole output text, `<think> ... </think> answer`:

* The choice is read from the answer after `</think>` (`extract_choice`): a letter written as
  `(B)`, `B.`, `B)`, `B:`, `B` alone or `answer is B`, else the option whose text the answer
  gives. An unfinished `<think>` has no answer.
* The predicted span (`predicted_span`) is the hull of the time spans written in the reasoning
  (every form app/timestamps.py reads), from the earliest start to the latest end. A TA-CoT trace
  cites the moments it relies on, and MMOU's evidence span is the stretch that holds all of them
  (the synthetic generator's evidence span is exactly the hull of its reasoning steps, so a right
  trace scores IoU 1); taking only the first span would score one step of a multi-step question.
  A reasoning with `<t>` tags cites its steps with them, so its other spans (a caption quoted on
  the way, with the times of what else it names) are left out. With no span in the reasoning, the
  spans of the answer count (a chosen option may be a time range); with none at all the item is
  a grounding miss (IoU 0).

Metrics (`score`): micro accuracy over items, accuracy per skill (an item counts for each of its
skills), and over items with an evidence span R@1 at IoU 0.3 / 0.5 / 0.7 and mean IoU
(Charades-STA protocol).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from app.timestamps import find_time_spans

MMOU_SKILLS = ("temporal understanding", "sequential reasoning", "needle-in-the-haystack", "referential grounding",
               "context understanding", "inference", "counting", "comparative reasoning", "sub-scene understanding",
               "audio-visual stitching", "holistic reasoning", "object interaction", "spurious correlations")
IOU_THRESHOLDS = (0.3, 0.5, 0.7)
THINK_START, THINK_END = "<think>", "</think>"
PROMPT_SUFFIX = "Reason step by step with timestamps before answering, then give the letter of the correct option."
MAX_DATA_BYTES = 256 * 2**20


class DataError(ValueError):
    """An evaluation data file that cannot be read as MMOU items."""


@dataclass
class Item:
    question_id: str
    question: str
    options: dict[str, str]
    correct_option_letter: str
    question_type: list[str]
    video: str | None = None
    video_duration: float | None = None
    start_time: float | None = None
    end_time: float | None = None
    domain: str | None = None
    reasoning: str | None = None

    @property
    def span(self) -> tuple[float, float] | None:
        """The evidence span, or None when the item has none."""
        if self.start_time is None or self.end_time is None:
            return None
        return self.start_time, self.end_time


def _seconds(value, where: str) -> float | None:
    """A time field: a number of seconds, a numeric string or a clock string (`01:02:03.5`)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise DataError(f"{where}: expected seconds, got {value!r}")
    if isinstance(value, (int, float)):
        t = float(value)
    elif isinstance(value, str) and re.fullmatch(r"\d+(?:\.\d+)?|\d+(?::[0-5]?\d){1,2}(?:\.\d+)?", value.strip()):
        t = 0.0
        for part in value.strip().split(":"):
            t = t * 60 + float(part)
    else:
        raise DataError(f"{where}: expected seconds (a number or hh:mm:ss), got {value!r}")
    if not math.isfinite(t) or t < 0:
        raise DataError(f"{where}: expected a finite time >= 0, got {value!r}")
    return t


def parse_item(raw, where: str) -> Item:
    """One MMOU item (a dict) -> Item, or DataError naming `where` and the field."""
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected an object, got {type(raw).__name__}")
    for key in ("question_id", "question", "options", "correct_option_letter"):
        if key not in raw:
            raise DataError(f"{where}: missing field {key!r}")
    qid = raw["question_id"]
    if isinstance(qid, bool) or not isinstance(qid, (str, int)) or str(qid) == "":
        raise DataError(f"{where}: field 'question_id' must be a non-empty string or integer, got {qid!r}")
    where = f"{where} (question_id {qid!r})"
    if not isinstance(raw["question"], str) or not raw["question"].strip():
        raise DataError(f"{where}: field 'question' must be a non-empty string")
    options = raw["options"]
    if isinstance(options, list):
        options = {chr(ord("A") + i): v for i, v in enumerate(options)}
    if not isinstance(options, dict) or len(options) < 2:
        raise DataError(f"{where}: field 'options' must map letters to option texts (at least 2), got {options!r}")
    for letter, text in options.items():
        if not (isinstance(letter, str) and re.fullmatch(r"[A-Z]", letter)):
            raise DataError(f"{where}: field 'options': key {letter!r} is not a capital letter")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: field 'options': option {letter} must be a non-empty string")
    correct = raw["correct_option_letter"]
    if not isinstance(correct, str) or correct.strip().upper() not in options:
        raise DataError(f"{where}: field 'correct_option_letter' is {correct!r}, not one of {''.join(options)}")
    skills = raw.get("question_type", [])
    if isinstance(skills, str):
        skills = [skills]
    if not isinstance(skills, list) or not all(isinstance(s, str) and s.strip() for s in skills):
        raise DataError(f"{where}: field 'question_type' must be a list of skill names, got {skills!r}")
    video = raw.get("video", raw.get("video_path", raw.get("video_id")))
    if video is not None and not isinstance(video, str):
        raise DataError(f"{where}: field 'video' must be a path string, got {video!r}")
    start = _seconds(raw.get("start_time"), f"{where}: field 'start_time'")
    end = _seconds(raw.get("end_time"), f"{where}: field 'end_time'")
    if (start is None) != (end is None):
        raise DataError(f"{where}: fields 'start_time' and 'end_time' must both be given or both be absent")
    if start is not None and end < start:
        raise DataError(f"{where}: the evidence span ends ({end}) before it starts ({start})")
    reasoning = raw.get("reasoning")
    if reasoning is not None and not isinstance(reasoning, str):
        raise DataError(f"{where}: field 'reasoning' must be a string")
    domain = raw.get("domain")
    return Item(str(qid), raw["question"], {k: v for k, v in options.items()}, correct.strip().upper(),
                [s.strip() for s in skills], video, _seconds(raw.get("video_duration"), f"{where}: field 'video_duration'"),
                start, end, domain if isinstance(domain, str) else None, reasoning)


def load_items(path) -> list[Item]:
    """Items of an MMOU-format JSON file: a list of items, or {"items": [...]}."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
    if size > MAX_DATA_BYTES:
        raise DataError(f"{path}: {size} bytes, more than the {MAX_DATA_BYTES} an item file may have")
    try:
        data = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from e
    if isinstance(data, dict) and "items" in data:
        data = data["items"]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of items or an object with an 'items' list")
    if not data:
        raise DataError(f"{path}: no items")
    items, seen = [], set()
    for i, raw in enumerate(data):
        item = parse_item(raw, f"{path}: item {i}")
        if item.question_id in seen:
            raise DataError(f"{path}: item {i}: question_id {item.question_id!r} appears twice")
        seen.add(item.question_id)
        items.append(item)
    return items


def resolve_video(item: Item, data_path, media_root=None) -> Path:
    """The video file of `item`: its `video` path under `media_root` (default: the data file's folder),
    tried as written and with `.mp4` added."""
    if not item.video:
        raise DataError(f"question_id {item.question_id!r}: no 'video' field")
    root = Path(media_root) if media_root is not None else Path(data_path).resolve().parent
    video = Path(item.video)
    tries = [video] if video.is_absolute() else [root / video]
    if not video.suffix:
        tries.append(tries[0].with_name(tries[0].name + ".mp4"))
    for p in tries:
        if p.is_file():
            return p
    raise DataError(f"question_id {item.question_id!r}: video not found (tried {', '.join(map(str, tries))})")


def question_prompt(item: Item) -> str:
    """The user message for an item: its options one a line, the TA-CoT request, then the question.
    The question comes last because the answer's first tokens look its subject up in the media: the
    bundled small model carried the subject poorly across ten options in between."""
    lines = [f"({k}) {v}" for k, v in item.options.items()] + [PROMPT_SUFFIX, item.question.strip()]
    return "\n".join(lines)


def split_answer(text: str) -> tuple[str | None, str | None]:
    """Model output -> (reasoning, answer). No `<think>` at all: (None, text); an unfinished
    `<think>`: (the reasoning so far, None)."""
    if THINK_END in text:
        reasoning, _, answer = text.rpartition(THINK_END)
        return reasoning.split(THINK_START, 1)[-1], answer
    if THINK_START in text:
        return text.split(THINK_START, 1)[1], None
    return None, text


def _norm(s: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", s.lower()).split())


def extract_choice(answer_text: str, options: dict[str, str]) -> str | None:
    """The option letter a model output chose, or None (see the module docstring)."""
    _, answer = split_answer(answer_text)
    if answer is None:
        return None
    a = answer.strip()
    letters = "".join(k for k in options if len(k) == 1)
    if not a or not letters:
        return None
    # "answer is B", "Answer: (B)", "the correct option is B" (the letter itself is case-sensitive)
    said = re.findall(rf"(?i:answer|option|choice)(?:\s+is)?\s*[:\-]?\s*\**\(?([{letters}])\)?\**(?![\w'])", a)
    if said:
        return said[-1].upper()
    m = re.match(rf"[\s*_]*(?:\(([{letters}])\)|([{letters}])[*_]*(?:[.):]|\s*$))", a)
    if m:
        return m.group(1) or m.group(2)
    na = _norm(a)
    exact = [k for k, v in options.items() if _norm(v) == na]
    if len(exact) == 1:
        return exact[0]
    # "B a red circle": a bare letter, then that option's text
    m = re.match(rf"([{letters}])\s+(.+)", a, re.DOTALL)
    if m and _norm(m.group(2)).startswith(_norm(options[m.group(1)])):
        return m.group(1)
    found = [k for k, v in options.items() if _norm(v) and re.search(rf"(?<!\w){re.escape(_norm(v))}(?!\w)", na)]
    if found:
        longest = max(len(_norm(options[k])) for k in found)
        best = [k for k in found if len(_norm(options[k])) == longest]
        if len(best) == 1:
            return best[0]
    return None


def predicted_span(text: str, media_duration: float | None = None) -> tuple[float, float] | None:
    """The span a model output grounds its answer in: the hull of its reasoning's spans (module docstring)."""
    reasoning, answer = split_answer(text)
    spans = find_time_spans(reasoning, media_duration) if reasoning else []
    spans = [s for s in spans if s.form == "tag"] or spans
    if not spans and answer:
        spans = find_time_spans(answer, media_duration)
    if not spans:
        return None
    return min(s.start_s for s in spans), max(s.end_s for s in spans)


def iou(a: tuple[float, float] | None, b: tuple[float, float] | None) -> float:
    """Temporal IoU of two (start, end) spans; 0 when either is None. Two equal points score 1."""
    if a is None or b is None:
        return 0.0
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    if union <= 0:
        return 1.0 if a[0] == b[0] else 0.0
    return inter / union


def score(items: list[Item], predictions) -> dict:
    """Metrics of model outputs against items.

    `predictions`: {question_id: output text} (a missing id is a wrong answer and a grounding miss)
    or a list of output texts in item order. Returns accuracy, per_skill, per_skill_n,
    r1_iou_0.3/0.5/0.7 and miou (None when no item has an evidence span), and the counts n,
    grounded, no_choice (outputs with no readable choice), no_span (grounded outputs with no span).
    """
    if isinstance(predictions, (list, tuple)):
        if len(predictions) != len(items):
            raise ValueError(f"{len(predictions)} predictions for {len(items)} items")
        predictions = {it.question_id: p for it, p in zip(items, predictions)}
    correct, skill_right, skill_n, ious = 0, {}, {}, []
    no_choice = no_span = 0
    for it in items:
        text = predictions.get(it.question_id)
        choice = extract_choice(text, it.options) if text is not None else None
        no_choice += choice is None
        right = choice == it.correct_option_letter
        correct += right
        for skill in dict.fromkeys(it.question_type or ["(none)"]):
            skill_n[skill] = skill_n.get(skill, 0) + 1
            skill_right[skill] = skill_right.get(skill, 0) + right
        if it.span is not None:
            pred = predicted_span(text, it.video_duration) if text is not None else None
            no_span += pred is None
            ious.append(iou(pred, it.span))
    order = {s: i for i, s in enumerate(MMOU_SKILLS)}
    skills = sorted(skill_n, key=lambda s: (order.get(s.lower(), len(order)), s))
    n = len(items)
    out = {"n": n, "accuracy": correct / n if n else None,
           "per_skill": {s: skill_right[s] / skill_n[s] for s in skills},
           "per_skill_n": {s: skill_n[s] for s in skills}, "grounded": len(ious)}
    for t in IOU_THRESHOLDS:
        out[f"r1_iou_{t}"] = sum(v >= t for v in ious) / len(ious) if ious else None
    out["miou"] = sum(ious) / len(ious) if ious else None
    out["no_choice"], out["no_span"] = no_choice, no_span
    return out


def format_table(metrics: dict) -> str:
    """The metrics of `score` as a plain-text table."""
    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}%"
    rows = [("accuracy", pct(metrics["accuracy"]), str(metrics["n"]))]
    rows += [(f"  {s}", pct(v), str(metrics["per_skill_n"][s])) for s, v in metrics["per_skill"].items()]
    g = str(metrics["grounded"])
    rows += [(f"R@1 IoU>={t}", pct(metrics[f"r1_iou_{t}"]), g) for t in IOU_THRESHOLDS]
    rows.append(("mIoU", "-" if metrics["miou"] is None else f"{metrics['miou']:.3f}", g))
    w = max(len(r[0]) for r in rows + [("metric",)])
    lines = [f"{'metric':<{w}}  {'value':>7}  {'items':>6}", "-" * (w + 17)]
    lines += [f"{a:<{w}}  {b:>7}  {c:>6}" for a, b, c in rows]
    lines.append(f"no readable choice: {metrics['no_choice']}, no span in a grounded answer: {metrics['no_span']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# running a model on the items, in the streaming layout
# ---------------------------------------------------------------------------------------------
# A clip is read as a live session reads it (fusion/stream.py): the chat header, then the media
# chunks in time order (each video tubelet after its frame label, each audio chunk after its
# time label, placed after the video of the same moment), then per question the question and the
# assistant header. The bundled default model was trained on exactly this input.

VIDEO_FPS = 1.0          # frames sampled a second (the default model's rate)
AUDIO_CLIP_S = 2.0       # audio chunk length (the default model's, and live audio's)
MAX_FRAMES = 512         # frames a video at most: longer videos are sampled more sparsely
TUBELET_BATCH = 16       # tubelets through the vision tower at once


def video_chunks(vision, frames, temporal_patch: int = 2, evs_rate: float = 0.0, session: str = ""):
    """(time s, uint8 [H, W, 3]) frames -> the EmbeddingChunks the encoder service makes of them
    (app.encoder_service.tubelet_chunks), TUBELET_BATCH tubelets through the tower at once."""
    from app.encoder_service import tubelet_chunks
    return list(tubelet_chunks(vision, frames, temporal_patch, evs_rate, session, batch=TUBELET_BATCH))


def audio_chunks(audio_tower, wave, clip_s: float = AUDIO_CLIP_S, session: str = ""):
    """16 kHz mono samples -> one EmbeddingChunk per clip of `clip_s` seconds, as the encoder
    service makes them (app.encoder_service.audio_clip_chunks)."""
    from app.encoder_service import audio_clip_chunks
    from encoders.audio import AudioStream
    return list(audio_clip_chunks(AudioStream(audio_tower, clip_s), [wave], session))


def media_chunks(omni, path, *, fps: float = VIDEO_FPS, audio_clip_s: float = AUDIO_CLIP_S,
                 evs_rate: float | None = None, max_frames: int = MAX_FRAMES):
    """Every chunk of a media file (its video at `fps` and its audio track), in session order."""
    from encoders import media

    info = media.probe(path)
    chunks = []
    if info.has_video and omni.vision is not None:
        rate = omni.settings.video_pruning_rate if evs_rate is None else evs_rate
        frames = media.iter_video_frames(path, fps=fps, max_frames=max_frames)
        chunks += video_chunks(omni.vision, frames, omni.settings.temporal_patch, rate)
    if info.has_audio and omni.audio is not None:
        chunks += audio_chunks(omni.audio, media.load_audio(path), audio_clip_s)
    if not chunks:
        raise DataError(f"{path}: nothing this model can read (video: {info.has_video}, audio: {info.has_audio})")
    return sorted(chunks, key=lambda c: c.sort_key())


def answer_questions(omni, chunks, questions: list[str], *, choices=None, max_new_tokens: int = 512,
                     batch: int = 16) -> list[str]:
    """Greedy answers to `questions` about one clip: the clip is prefilled once (a narrating model
    captions each chunk as it goes, OmniModel.read_chunks), then `answer_from` that session."""
    import torch

    from fusion.prompt import stream_header
    from engine.generate import Session
    with torch.inference_mode():
        session = Session(omni.decoder)
        session.prefill(omni.tokenizer.encode(stream_header()))
        omni.read_chunks(session, chunks)
        return answer_from(session, omni.tokenizer, questions, choices=choices, max_new_tokens=max_new_tokens,
                           batch=batch)


def answer_from(session, tok, questions: list[str], *, choices=None, max_new_tokens: int = 512,
                batch: int = 16) -> list[str]:
    """Greedy answers to `questions` about what `session` has read: each from a fork of it (the
    question, the assistant header), `batch` forks decoded together (engine.generate.BatchDecoder).

    With `choices` (a list of candidate answers for each question) the answer is guided to one of
    them, as multiple-choice benchmarks score likelihoods (and vLLM's `guided_choice`): the
    reasoning is decoded greedily up to `</think>` (written for it when the budget runs out), then
    the candidate the model gives the highest log-likelihood, ended, is the answer."""
    import torch

    from fusion.prompt import question_tail
    from engine.generate import BatchDecoder, SamplingParams
    think_end = tok.token_id(THINK_END) if choices is not None else None
    stop = tuple(tok.eos_ids) + ((think_end,) if think_end is not None else ())
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, stop_ids=stop)
    answers: list[str] = []
    with torch.inference_mode():
        for first in range(0, len(questions), batch):
            group = BatchDecoder(session.model)
            forks, out, last = [], {}, {}
            for q in questions[first:first + batch]:
                fork = session.fork()
                ids = tok.encode(question_tail(q))
                fork.check_room(len(ids) + 1)
                fork.prefill(ids)
                forks.append(fork)
                out[id(fork)] = []
                group.join(fork, params)
            while len(group):
                for s, t in group.step():
                    last[id(s)] = t
                    if t not in stop:
                        out[id(s)].append(t)
            for k, fork in enumerate(forks):
                text = tok.decode(out[id(fork)])
                if choices is not None:
                    if last.get(id(fork)) != think_end:
                        fork.prefill([think_end])
                    text += THINK_END + "\n" + best_choice(fork, tok, choices[first + k])
                answers.append(text)
    return answers


def choice_ids(tok, text: str) -> list[int]:
    """The tokens of `text` written as the answer after `</think>`: a newline, the text, the end of the turn."""
    return tok.encode("\n" + text) + [tok.token_id("<|im_end|>") if tok.has_token("<|im_end|>") else tok.eos_ids[0]]


def best_choice(session, tok, candidates: list[str]) -> str:
    """The candidate answer (written after `</think>` and a newline, then ended) that `session`
    gives the highest log-likelihood; the first of equals."""
    import torch

    best, best_lp = candidates[0], -math.inf
    for text in candidates:
        ids = choice_ids(tok, text)
        logits = session.logits
        if len(ids) > 1:
            fork = session.fork()
            fork.check_room(len(ids) - 1)
            more = session.model(fork.state, input_ids=torch.tensor([ids[:-1]]), logits="all").logits[0]
            logits = torch.cat([logits, more])
        lp = float(torch.log_softmax(logits.float(), -1)[torch.arange(len(ids)), torch.tensor(ids)].sum())
        if lp > best_lp:
            best, best_lp = text, lp
    return best


def eval_arguments():
    """The options of `python -m app eval` (a parent parser for app/cli.py)."""
    import argparse

    from app.cli import DEFAULT_MODEL

    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="checkpoint folder (default: the bundled model)")
    p.add_argument("--data", type=Path, required=True, help="MMOU-format items: a JSON list (or {\"items\": [...]})")
    p.add_argument("--media-root", type=Path, default=None, help="folder the items' `video` paths are relative to "
                   "(default: the data file's folder)")
    p.add_argument("--evs", type=float, default=None, metavar="RATE",
                   help="Efficient Video Sampling pruning rate in [0, 1) (default: the checkpoint's)")
    p.add_argument("--fps", type=float, default=VIDEO_FPS, help=f"video frames sampled a second (default {VIDEO_FPS:g})")
    p.add_argument("--audio-clip-seconds", type=float, default=AUDIO_CLIP_S,
                   help=f"audio chunk length in seconds (default {AUDIO_CLIP_S:g})")
    p.add_argument("--max-frames", type=int, default=MAX_FRAMES, help=f"frames a video at most (default {MAX_FRAMES})")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--guided-choice", action="store_true",
                   help="answer with the option the model finds likeliest after its reasoning (as MMLU-style "
                        "benchmarks score), not free text")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N items only")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    p.add_argument("--json", action="store_true", help="end with one JSON object of the metrics on the last line")
    p.add_argument("--predictions", type=Path, default=None, help="also write every item's output text here (JSON)")
    return p


def evaluate_items(omni, items: list[Item], data_path, *, media_root=None, evs_rate=None, fps=VIDEO_FPS,
                   audio_clip_s=AUDIO_CLIP_S, max_frames=MAX_FRAMES, max_new_tokens=512, guided_choice=False,
                   progress=True) -> dict:
    """{question_id: output text} for `items`, one session per video, with a progress bar; with
    `guided_choice`, each answer is one of its item's options (`answer_from`)."""
    import sys

    from tqdm import tqdm

    by_video: dict[Path, list[Item]] = {}
    for it in items:
        by_video.setdefault(resolve_video(it, data_path, media_root), []).append(it)
    predictions: dict[str, str] = {}
    with tqdm(total=len(items), unit="item", desc="eval", file=sys.stderr, disable=not progress) as bar:
        for video, group in by_video.items():
            chunks = media_chunks(omni, video, fps=fps, audio_clip_s=audio_clip_s, evs_rate=evs_rate,
                                  max_frames=max_frames)
            answers = answer_questions(omni, chunks, [question_prompt(it) for it in group],
                                       choices=[list(it.options.values()) for it in group] if guided_choice else None,
                                       max_new_tokens=max_new_tokens)
            for it, text in zip(group, answers):
                predictions[it.question_id] = text
            bar.update(len(group))
    return predictions


def eval_command(args) -> int:
    """`python -m app eval`: answer every item with the model, print the metrics table (and JSON)."""
    import torch

    from fusion.omni import OmniModel

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.evs is not None and not 0.0 <= args.evs < 1.0:
        raise ValueError(f"--evs {args.evs}: the pruning rate must be in [0, 1)")
    if not (args.fps > 0 and math.isfinite(args.fps)):
        raise ValueError(f"--fps {args.fps}: must be a positive number")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit {args.limit}: must be at least 1")
    if not args.model.is_dir():
        raise ValueError(f"--model {args.model}: not a folder (a checkpoint folder holds config.json, "
                         "model.safetensors and tokenizer.json)")
    items = load_items(args.data)[: args.limit]
    for it in items:                       # every video must exist before the model is loaded
        resolve_video(it, args.data, args.media_root)
    omni = OmniModel.load(args.model)
    predictions = evaluate_items(omni, items, args.data, media_root=args.media_root, evs_rate=args.evs, fps=args.fps,
                                 audio_clip_s=args.audio_clip_seconds, max_frames=args.max_frames,
                                 max_new_tokens=args.max_new_tokens, guided_choice=args.guided_choice)
    metrics = score(items, predictions)
    if args.predictions:
        args.predictions.write_text(json.dumps(predictions, indent=1) + "\n")
    print(format_table(metrics))
    if args.json:
        print(json.dumps(metrics))
    return 0
