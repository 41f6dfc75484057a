"""The questions with perception taken out: the decoder on gold captions of fresh timelines.

A clip's questions need two things: knowing what each chunk holds (perception) and finding the
asked thing among the chunks (a lookup in the context). `gold-captions` measures the second on
the cached validation clips, but a run's clips are few and are seen many times, so a decoder
trained on them can memorize them. Here every step draws new timelines with the clip generator
(recipes.synthetic, no media rendered) and lays them out as a session of that length is laid out:
each chunk's label, its media brackets left empty, then its gold caption (data.chunk_caption).
The rows are the timeline's questions (TA-CoT targets, the option's text as the answer) and its
"When is X?" lookup rows; the held-out figure is greedy answers on fixed fresh timelines, scored
as `python -m app eval` scores them.

    python -m recipes.train text-questions --steps 1500       (the run's seeded decoder after recall)
    python -m recipes.train text-questions --model DIR          (a trained checkpoint's decoder)
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from app.encoder_service import frame_label
from fusion.prompt import question_tail, stream_header
from fusion.stream import IMG_END, IMG_START, SO_END, SO_START, audio_chunk_label

from .data import chain_rows, chunk_caption, lookup_rows, prompt_and_target, route_chains, window_rows


def chunk_layout(timeline: dict, fps: float = 1.0, audio_clip_s: float = 2.0, temporal_patch: int = 2) -> list[dict]:
    """The chunks a session reads from the timeline's clip (data.clip_features' `meta` without the
    token counts), in session order: the frames `encoders.media.sample_indices` picks at `fps` from
    the rendered clip's frames (recipes.synthetic.media.write_clip: round(duration x its fps)), at
    their container times, in tubelets of `temporal_patch` (the last may be shorter); audio
    chunks of `audio_clip_s`."""
    from encoders.media import sample_indices

    rate, duration = timeline["fps"], timeline["duration"]
    index = sample_indices(round(duration * rate), rate, fps=fps)
    chunks = []
    for seq in range(-(-len(index) // temporal_patch)):              # a last odd frame is a tubelet of its own
        numbers = list(range(seq * temporal_patch + 1, min((seq + 1) * temporal_patch, len(index)) + 1))
        times = [index[n - 1] / rate for n in numbers]
        chunks.append({"modality": "video", "t0": times[0], "t1": times[-1], "label": frame_label(numbers, times),
                       "seq": seq})
    t0, seq = 0.0, 0
    while t0 < duration - 1e-6:
        t1 = round(min(duration, t0 + audio_clip_s), 3)
        chunks.append({"modality": "audio", "t0": t0, "t1": t1, "label": audio_chunk_label(t0, t1), "seq": seq})
        t0, seq = t1, seq + 1
    return sorted(chunks, key=lambda c: (c["t0"], c["modality"] == "audio", c["seq"]))


def caption_context(timeline: dict) -> str:
    """A session's text with the gold caption after every chunk and no media in the brackets."""
    brackets = {"video": IMG_START + IMG_END, "audio": SO_START + SO_END}
    return stream_header() + "".join(c["label"] + brackets[c["modality"]] + "\n" + chunk_caption(timeline, c)
                                     for c in chunk_layout(timeline))


class TimelineDraw:
    """Fresh timelines and their questions, from the generator's own sampler and question maker."""

    def __init__(self):
        from recipes.synthetic.wordbank import load_wordbank

        bank = load_wordbank()
        self.words = bank.categories
        self.word_seconds = bank.word_seconds

    def __call__(self, rng: np.random.Generator, lo: float, hi: float, name: str) -> tuple[dict, list[dict]]:
        from recipes.synthetic.questions import make_questions
        from recipes.synthetic.timeline import sample_timeline

        tl = sample_timeline(name, round(float(rng.uniform(lo, hi)), 1), rng, self.words, self.word_seconds)
        return tl.to_json(), make_questions(tl, rng, self.words, f"{name}.mp4")


def text_rows(tok, items: list[dict], lookups: list[tuple[str, str, str]]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, target ids) of each question (the option's text as the answer) and lookup row."""
    end = tok.token_id("<|im_end|>")
    pairs = [prompt_and_target(it, "text") for it in items] + [(q, t) for _, q, t in lookups]
    return [(tok.encode(question_tail(q)), tok.encode(t) + [end]) for q, t in pairs]


def text_loss(decoder, tok, timeline: dict, rows) -> torch.Tensor:
    """Mean cross-entropy of the rows' targets, each row continuing the timeline's caption context."""
    from .train import Batch, continue_rows, decoder_forward, length_groups

    ids = torch.tensor([tok.encode(caption_context(timeline))])
    state = decoder.new_state()
    decoder_forward(decoder, state, inputs_embeds=decoder.embed(ids), logits="none")
    nll, n = 0.0, 0
    for group in length_groups(rows):
        b = Batch(group)
        where = b.target != -100
        hidden = continue_rows(decoder, state, b)[where]
        nll = nll + F.cross_entropy(decoder.lm_head(hidden).float(), b.target[where], reduction="sum")
        n += b.num_targets
    return nll / n


@torch.inference_mode()
def text_accuracy(decoder, tok, sets: list[tuple[dict, list[dict]]], max_new_tokens: int = 192) -> dict:
    """Greedy answers to every question of each (timeline, items) (app.evaluate.answer_from, from the
    timeline's caption context), scored as `python -m app eval` scores them (app.evaluate.score),
    and the share of "When is X?" answers whose first step is the target's exactly."""
    from app.evaluate import answer_from, parse_item, score
    from engine.generate import Session

    decoder.eval()
    asked, answers, when, when_exact = [], [], 0, 0
    for timeline, items in sets:
        stream = Session(decoder)
        stream.prefill(tok.encode(caption_context(timeline)))
        pairs = [prompt_and_target(it, "text") for it in items]
        for it, (_, target), out in zip(items, pairs, answer_from(stream, tok, [q for q, _ in pairs],
                                                                   max_new_tokens=max_new_tokens)):
            asked.append(parse_item(it, "text-questions item"))
            answers.append("<think>\n" + out)
            if it["question"].startswith("When is"):
                when += 1
                when_exact += out.split("\n")[0] == target.split("\n")[0]
    m = score(asked, answers)
    return {**m, "when_exact": round(when_exact / max(1, when), 4), "when_n": when}


def train_text(decoder, tok, steps: int, lr: float, seed: int, log_path: Path, timelines: int = 2,
               lengths: tuple[float, float] = (20.0, 60.0), questions: int = 12, lookups: int = 24,
               chains: int = 0, windows: int = 0, held_out: int = 12, every: int = 250, recall_rows: int = 16,
               stage: int = 0, start_eval: dict | None = None, progress: bool = True) -> dict:
    """`steps` of AdamW (constant `lr` after a 50-step warm-up; experts balanced as in training) on
    `timelines` fresh timelines a step, each with up to `questions` questions (the chained ones'
    reasoning through the captions they read, data.route_chains), `lookups` lookup rows, `chains`
    chained rows (data.chain_rows) and `windows` rows asking a chunk's caption by its second
    (data.window_rows), plus `recall_rows` rows of the recall phase's last stage (weight 0.5, as in
    the clip steps). Held-out accuracy on `held_out` fixed timelines at the start and every `every`
    steps, one JSON line each in `log_path`. A later `stage` of one run draws other training
    timelines and rows from the same `seed`, and the same held-out ones; its `start_eval` (the last
    evaluation of the stage before, the same decoder on the same timelines) is its step 0, not run
    again. Returns the evaluations."""
    from tqdm import tqdm

    from .config import TrainConfig
    from .recall import chat_gap, recall_batch, recall_loss, stage_task
    from .train import ExpertLoad

    cfg = TrainConfig()
    draw = TimelineDraw()
    held_rng = np.random.default_rng([seed, 1])
    held = [draw(held_rng, *lengths, f"held{k}") for k in range(held_out)]
    rng, pick = np.random.default_rng([seed, 0] + [stage] * (stage > 0)), random.Random(seed + 7919 * stage)
    recall_task = stage_task(cfg.recall_stages[-1], chat_gap(tok), recall_rows) if recall_rows else None
    recall_g = torch.Generator().manual_seed(seed + 7000 + stage)
    params = [p for p in decoder.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=cfg.weight_decay)
    load = ExpertLoad(decoder)
    evals, recent, start = [], [], time.perf_counter()

    def evaluate(step: int, known: dict | None = None) -> None:
        m = known or text_accuracy(decoder, tok, held)
        row = {"step": step, "time_s": round(time.perf_counter() - start, 1),
               "loss": round(sum(recent) / len(recent), 4) if recent else None,
               **{k: m[k] for k in ("accuracy", "per_skill", "r1_iou_0.5", "miou", "no_choice", "n", "when_exact")}}
        evals.append(row)
        log.write(json.dumps(row) + "\n")
        log.flush()
        decoder.train()

    with open(log_path, "w") as log, tqdm(total=steps, desc="text questions", unit="step", file=sys.stderr,
                                          disable=not progress) as bar:
        evaluate(0, start_eval)
        for step in range(1, steps + 1):
            for g in opt.param_groups:
                g["lr"] = lr * min(1.0, step / 50)
            loss = 0.0
            for k in range(timelines):
                timeline, items = draw(rng, *lengths, f"s{seed}-{stage}-t{step}-{k}" if stage else f"s{seed}-t{step}-{k}")
                layout = chunk_layout(timeline) if questions or chains or windows else []
                looks = lookup_rows(timeline)
                chained = chain_rows(timeline, layout) if chains else []
                by_second = window_rows(timeline, layout) if windows else []
                asked = route_chains(timeline, layout, items) if questions else []
                rows = text_rows(tok, pick.sample(asked, min(questions, len(asked))),
                                 pick.sample(looks, min(lookups, len(looks)))
                                 + pick.sample(chained, min(chains, len(chained)))
                                 + pick.sample(by_second, min(windows, len(by_second))))
                loss = loss + text_loss(decoder, tok, timeline, rows) / timelines
            total = loss
            if recall_task is not None:
                total = total + 0.5 * recall_loss(decoder, *recall_batch(recall_task, decoder.cfg.vocab_size, recall_g))[0]
            opt.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            load.update(cfg.balance_rate)
            recent = (recent + [float(loss.detach())])[-50:]
            bar.set_postfix(loss=f"{sum(recent) / len(recent):.3f}")
            bar.update(1)
            if step % every == 0 or step == steps:
                evaluate(step)
    load.remove()
    decoder.eval()
    return {"steps": steps, "lr": lr, "seed": seed, "seconds": round(time.perf_counter() - start, 1),
            "rows": {"timelines": timelines, "questions": questions, "lookups": lookups, "chains": chains,
                     "windows": windows}, "evals": evals}


def text_probe(out: Path, model_dir: Path | None = None, seed: int = 0, pattern: str | None = None,
               progress: bool = True, **kw) -> dict:
    """The decoder of `model_dir` (a checkpoint this recipe wrote, with its tokenizer) or, without
    it, the run's seeded decoder (with `pattern` as its hybrid_override_pattern if given) after the
    recall phase, with a tokenizer trained on fresh timelines' text; trained by `train_text(**kw)`.
    The log, tokenizer and decoder weights go to `out`."""
    import shutil

    from safetensors.torch import save_file

    from engine.tokenizer import Tokenizer, train_tokenizer

    from engine.checkpoint import init_random

    from .config import VOCAB_SIZE, WHOLE_NUMBERS, TrainConfig, omni_config
    from .data import corpus_texts
    from .model import build_parts, new_model
    from .recall import chat_gap, recall_stages
    from .run import load_trained

    if model_dir is not None and pattern:
        raise ValueError("--pattern builds a fresh decoder; a checkpoint (--model) has its own")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _, decoder, vision, audio = new_model(seed, VOCAB_SIZE)
    if pattern:
        raw = omni_config(VOCAB_SIZE)
        raw["text_config"]["hybrid_override_pattern"] = pattern
        decoder = init_random(build_parts(raw)[0], seed)
    summary = {"from": str(model_dir) if model_dir else f"seed {seed}, {decoder.cfg.pattern}, recall phase"}
    if model_dir is not None:
        load_trained(model_dir, decoder, vision, audio)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copyfile(Path(model_dir) / name, out / name)
    else:
        draw, rng = TimelineDraw(), np.random.default_rng([seed, 2])
        drawn = [draw(rng, 20.0, 180.0, f"corpus{k}") for k in range(200)]
        train_tokenizer(out, corpus_texts([it for _, its in drawn for it in its], [tl for tl, _ in drawn]),
                        vocab_size=VOCAB_SIZE, repeat=1, whole_numbers=WHOLE_NUMBERS)
    tok = Tokenizer.from_dir(out)
    if model_dir is None:
        cfg = TrainConfig(seed=seed)
        summary["recall"] = recall_stages(decoder, list(cfg.recall_stages), cfg.recall_lr, seed, out / "recall_log.jsonl",
                                          progress, until=cfg.recall_until, gap_ids=chat_gap(tok))
    summary.update(train_text(decoder, tok, seed=seed, log_path=out / "text_log.jsonl", progress=progress, **kw))
    save_file({k: v.contiguous() for k, v in decoder.state_dict().items()}, str(out / "decoder.safetensors"))
    return summary
