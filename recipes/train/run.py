"""A whole run, from a seed to a shipped checkpoint folder with its log, curves and metrics.

    data      training clips (seed S) with cached tower features; 4 validation clips (seed S+1000)
    tokenizer byte-level BPE on the training corpus, special tokens at the released ids
    train     the loop of train.py
    save      the checkpoint in the released Hugging Face layout (model.py)
    eval      `python -m app eval`'s own path on held-out clips: 20 s - 3 min (seed S+2000) and
              6 min (seed S+3000, twice the longest training clip), EVS off and at 0.7

Everything in the output folder except the figures' timings is a function of the seed.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import sys
import time
from pathlib import Path

import torch

from app.evaluate import question_prompt

from .card import write_model_card
from .config import VOCAB_SIZE, WHOLE_NUMBERS, TrainConfig

EVS_EVAL_RATE = 0.7


def _clips(folder: Path, items: list[dict]):
    from .data import load_clip
    by: dict[str, list[dict]] = {}
    for it in items:
        by.setdefault(Path(it["video"]).stem, []).append(it)
    return [load_clip(folder, cid, its) for cid, its in sorted(by.items())]


def heldout_set(folder: Path, seed: int, clips: int, lo: float, hi: float, per_clip: int, workers: int) -> Path:
    """Generate held-out clips (mp4 only: evaluation runs the towers itself) and write eval.json,
    `per_clip` questions of each clip drawn with `seed`. Returns the eval.json path."""
    from recipes.synthetic.generate import generate, is_current
    from recipes.synthetic.wordbank import load_wordbank

    path = folder / "eval.json"
    if not (path.exists() and is_current(folder, seed, 0, lo, hi, load_wordbank())):
        items = generate(folder, seed, clips, lo, hi, progress=True)
        rng = random.Random(seed)
        by: dict[str, list[dict]] = {}
        for it in items:
            by.setdefault(it["video"], []).append(it)
        chosen = [it for group in by.values() for it in sorted(rng.sample(group, min(per_clip, len(group))),
                                                                  key=lambda x: x["question_id"])]
        path.write_text(json.dumps(chosen, indent=1) + "\n")
    return path


def evaluate_set(model_dir: Path, data: Path, evs_rate: float | None, guided_choice: bool = False) -> dict:
    """`python -m app eval --model model_dir --data data [--evs rate] [--guided-choice]`, in process."""
    from app.evaluate import evaluate_items, load_items, score
    from fusion.omni import OmniModel

    omni = OmniModel.load(model_dir)
    items = load_items(data)
    t = time.perf_counter()
    preds = evaluate_items(omni, items, data, evs_rate=evs_rate, guided_choice=guided_choice)
    m = score(items, preds)
    m["seconds"] = round(time.perf_counter() - t, 1)
    return m


def caption_things(caption: str, modality: str, narration=None) -> set[str]:
    """The names a caption (data.chunk_caption's form, of `narration`: default the recipe's) gives,
    their time spans left out."""
    from .data import NARRATION

    return {re.sub(r" [\d.]+-[\d.]+$", "", t) for t in (narration or NARRATION).things(caption, modality)}


def narration_accuracy(model_dir: Path, folder: Path, show=None) -> dict:
    """How well a narrating model captions the chunks of the clips in `folder` (clips/*.mp4 with
    their timelines/*.json), read as `python -m app eval` reads them (EVS off): per modality, the
    share of chunks whose caption is exactly the timeline's, and of the things the captions name,
    the share that are there (precision) and of the things there, the share named (recall). A
    thing is compared by its name (its time span left out); `exact` compares the whole caption.
    `show` (a text stream) gets three lines a chunk: which chunk, its gold caption, the model's own."""
    import torch

    from fusion.prompt import stream_header
    from app.evaluate import media_chunks
    from engine.generate import Session
    from fusion.omni import OmniModel

    from .data import chunk_caption

    omni = OmniModel.load(model_dir)
    if omni.settings.narration is None:
        raise ValueError(f"{model_dir}: the model does not narrate (no stream_narration in config.json)")
    narration, counts = omni.settings.narration, {}

    for mp4 in sorted((Path(folder) / "clips").glob("*.mp4")):
        timeline = json.loads((Path(folder) / "timelines" / f"{mp4.stem}.json").read_text())
        with torch.inference_mode():
            session = Session(omni.decoder)
            session.prefill(omni.tokenizer.encode(stream_header()))
            chunks = media_chunks(omni, mp4, evs_rate=0.0)
            for c, (_, said) in zip(chunks, omni.read_chunks(session, chunks)):
                gold = chunk_caption(timeline, {"modality": c.modality, "t0": c.t0, "t1": c.t1}, narration)
                if show is not None:
                    show.write(f"{mp4.stem} {c.modality} {c.t0:.1f}-{c.t1:.1f}\n  gold {gold.strip()}\n  own  {said.strip()}\n")
                n = counts.setdefault(c.modality, dict.fromkeys(("chunks", "exact", "named", "named_right", "there"), 0))
                n["chunks"] += 1
                n["exact"] += said == gold
                got, want = (caption_things(x, c.modality, narration) for x in (said, gold))
                n["named"] += len(got)
                n["named_right"] += len(got & want)
                n["there"] += len(want)
    return {m: {"chunks": n["chunks"], "exact": round(n["exact"] / max(1, n["chunks"]), 4),
                "precision": round(n["named_right"] / max(1, n["named"]), 4),
                "recall": round(n["named_right"] / max(1, n["there"]), 4)} for m, n in counts.items()}


def gold_caption_accuracy(model_dir: Path, folder: Path, questions_per_clip: int = 12,
                          max_new_tokens: int = 256) -> dict:
    """How well a trained model answers when perception is taken out of the way: each clip of a
    cached data folder (`folder`: items/ and features/, e.g. `<data>/seed0/val`) is read with its
    media and, after every chunk, the chunk's gold caption in place of the model's own; then each
    question is answered greedily (reasoning and answer) and scored as `python -m app eval`
    scores it. Against the held-out accuracy, this splits a miss between seeing and looking up."""
    from app.evaluate import answer_from, parse_item, score
    from engine.generate import Session

    trainer, clips = trained_on_cached(model_dir, folder)
    decoder, tok = trainer.decoder, trainer.tok
    asked, answers = [], []
    with torch.inference_mode():
        for clip in clips:
            embeds, _, _ = trainer.prefix(clip, captioned=set(range(len(clip.meta))))
            stream = Session(decoder)
            stream.prefill(embeds=embeds)
            group = [parse_item(it, "gold-caption item") for it in clip.items[:questions_per_clip]]
            asked += group
            answers += ["<think>\n" + a for a in answer_from(stream, tok, [question_prompt(it) for it in group],
                                                              max_new_tokens=max_new_tokens)]
    return score(asked, answers)


def trained_on_cached(model_dir: Path, folder: Path):
    """A checkpoint this recipe wrote, as a Trainer (decoder in eval mode), and the clips of a cached
    data folder (items/, features/) to measure it on."""
    from engine.tokenizer import Tokenizer

    from .model import new_model
    from .train import Trainer

    model_dir, folder = Path(model_dir), Path(folder)
    seed = json.loads((model_dir / "metrics.json").read_text())["seed"] if (model_dir / "metrics.json").exists() else 0
    raw, decoder, vision, audio = new_model(seed, VOCAB_SIZE)
    load_trained(model_dir, decoder, vision, audio)
    decoder.eval()
    trainer = Trainer(decoder, vision, audio, Tokenizer.from_dir(model_dir), raw["image_token_id"], raw["audio_token_id"])
    items = [it for f in sorted((folder / "items").glob("*.json")) for it in json.loads(f.read_text())]
    return trainer, _clips(folder, items)


def load_trained(folder, decoder, vision, audio) -> None:
    """The trained parts (decoder, vision tower, sound projector) from a checkpoint this recipe
    wrote; its conformer must be the seeded one `audio` already holds."""
    from safetensors.torch import load_file

    from .model import checkpoint_tensors

    saved = load_file(str(Path(folder) / "model.safetensors"))
    ours = checkpoint_tensors(decoder, vision, audio)
    if saved.keys() != ours.keys():
        raise ValueError(f"{folder}: not a checkpoint of this model (names differ)")
    for k, v in ours.items():
        trained = k.startswith(("language_model.", "vision_model.", "mlp1.", "sound_projection."))
        if not trained and not torch.equal(saved[k], v):
            raise ValueError(f"{folder}: tower tensor {k} differs from this seed's (another seed's run?)")
    with torch.no_grad():
        for module, prefix in ((decoder, "language_model."), (audio.projection, "sound_projection.")):
            module.load_state_dict({k[len(prefix):]: v for k, v in saved.items() if k.startswith(prefix)})
        vision.load_state_dict({k: saved[k] for k in vision.state_dict()})


VALIDATION_KEYS = ("val_loss", "val_loss_swapped_media", "val_caption_loss", "val_caption_loss_swapped_media")


def log_summary(rows: list[dict]) -> dict:
    """What metrics.json says of a training log: tokens, first and final losses, the last
    validation losses (with each clip's own media and another clip's), the expert balance."""
    last = rows[-max(1, len(rows) // 20):]
    return {"tokens": sum(r["prefix_tokens"] + r["suffix_tokens"] for r in rows),
            "target_tokens": sum(r.get("qa_tokens", 0) + r.get("timeline_tokens", 0) for r in rows),
            "caption_tokens": sum(r.get("caption_tokens", 0) for r in rows),
            "first_loss": rows[0]["loss"], "final_loss": round(sum(r["loss"] for r in last) / len(last), 4),
            **{f"final_{k}": next((r[k] for r in reversed(rows) if k in r), None) for k in VALIDATION_KEYS},
            "final_expert_imbalance": round(sum(r["expert_imbalance"] for r in last) / len(last), 4)}


def refresh_card(out) -> Path:
    """Redraw a run folder's curves, recompute the log's part of metrics.json from train_log.jsonl
    (the rest is kept), and rewrite its card."""
    from .plots import loss_curves

    out = Path(out)
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["training"].update(log_summary(rows))
    metrics["curves"] = [p.name for p in loss_curves(out / "train_log.jsonl", out)]
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    return write_model_card(out)


def run(out, cfg: TrainConfig, data_dir, evaluate: bool = True, progress: bool = True, phase1_from=None,
        init=None) -> dict:
    """Data, tokenizer, phase 1 (or, with `phase1_from`, its weights from that folder), phase 2,
    the checkpoint in `out`, its curves, metrics and card, and (with `evaluate`) the held-out scores.
    With `init` (a checkpoint this recipe wrote, same seed) phase 1 continues its weights with its
    tokenizer: the phases before the clips are skipped."""
    from engine.tokenizer import Tokenizer, train_tokenizer

    from .data import corpus_texts, make_clips
    from .model import new_model, save_omni
    from .plots import loss_curves
    from .train import Trainer, train

    out, data_dir = Path(out), Path(data_dir)
    torch.set_num_threads(cfg.threads)
    times, t0 = {}, time.perf_counter()
    common = dict(model_seed=cfg.seed, vocab_size=VOCAB_SIZE, fps=cfg.fps, audio_clip_s=cfg.audio_clip_s,
                  workers=cfg.workers)
    items = make_clips(data_dir / "train", cfg.seed, cfg.train_bands, desc="training clips", **common)
    val_items = make_clips(data_dir / "val", cfg.seed + 1000, [(20.0, 60.0, cfg.val_clips)], desc="validation clips", **common)
    clips, val_clips = _clips(data_dir / "train", items), _clips(data_dir / "val", val_items)
    times["data_s"] = round(time.perf_counter() - t0, 1)

    t = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    if init is None:
        train_tokenizer(out, corpus_texts(items, [c.timeline for c in clips]), vocab_size=VOCAB_SIZE, repeat=1,
                        whole_numbers=WHOLE_NUMBERS)
    else:             # its weights index its own tokenizer's ids
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copyfile(Path(init) / name, out / name)
    tok = Tokenizer.from_dir(out)
    raw, decoder, vision, audio = new_model(cfg.seed, VOCAB_SIZE)
    if init is not None:
        load_trained(init, decoder, vision, audio)
    trainer = Trainer(decoder, vision, audio, tok, raw["image_token_id"], raw["audio_token_id"])

    def snapshot(steps_done: int) -> None:
        folder = data_dir / "snapshots" / f"step{steps_done}"
        save_omni(folder, raw, decoder, vision, audio)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copyfile(out / name, folder / name)

    log_path = out / "train_log.jsonl"
    phases, fresh = [], phase1_from is None and init is None
    if init is not None:
        phases.append({"phase": "init", "from": str(init)})
    if fresh and cfg.vision_steps:
        from .vision import pretrain_vision
        with open(out / "vision_log.jsonl", "w") as vlog:
            got = pretrain_vision(vision, cfg.vision_steps, cfg.seed, cfg.vision_lr, cfg.vision_clips,
                                  log=lambda row: vlog.write(json.dumps(row) + "\n"), progress=progress)
        phases.append({"phase": "vision", "task": "objects' colour and shape or word, fresh tubelets", **got})
    if fresh and cfg.recall_stages:
        from .recall import chat_gap, recall_stages
        t_recall = time.perf_counter()
        stages = recall_stages(decoder, list(cfg.recall_stages), cfg.recall_lr, cfg.seed, out / "recall_log.jsonl",
                               progress, until=cfg.recall_until, gap_ids=chat_gap(tok))
        phases.append({"phase": 0, "task": "associative recall", "stages": stages,
                       "seconds": round(time.perf_counter() - t_recall, 1)})
    if fresh and cfg.text_steps:
        from .textqa import train_text
        # with a mix stage, the lookups come alone first: from the recall phase's decoder, the lookup
        # was not learnt within 1,000-1,200 steps of the mix (FINDINGS, stop 25)
        stages = [("text_log.jsonl", cfg.text_steps, 0 if cfg.text_mix_steps else 1)]
        if cfg.text_mix_steps:
            stages.append(("text_mix_log.jsonl", cfg.text_mix_steps, 1))
        for stage, (log_name, steps, mixed) in enumerate(stages):
            got = train_text(decoder, tok, steps, cfg.text_lr, cfg.seed, out / log_name, stage=stage,
                             timelines=cfg.text_timelines, lookups=cfg.text_lookups,
                             questions=cfg.text_questions * mixed, chains=cfg.text_chains * mixed,
                             windows=cfg.text_windows * mixed, held_out=cfg.text_held_out, every=steps,
                             start_eval=phases[-1]["evals"][-1] if stage else None, progress=progress)
            trained = ", ".join(["lookups"] + [k for k in ("questions", "chains", "windows") if got["rows"][k]])
            phases.append({"phase": "text", "task": f"{trained} on gold captions of fresh timelines", **got})
    if fresh and cfg.chunk_caption_steps:
        from .train import train_chunk_captions
        got = train_chunk_captions(trainer, clips, cfg, out / "chunk_caption_log.jsonl", progress)
        phases.append({"phase": "chunk captions", "task": "captions of single chunks, each read alone", **got})
    if phase1_from is None:
        summary = train(trainer, clips, cfg, log_path, val_clips, val_every=max(1, cfg.steps // 10),
                        progress=progress, snapshot=snapshot)
    else:             # phase 1 ran before (its log is in `out`): continue from its weights
        load_trained(phase1_from, decoder, vision, audio)
        steps_run = len(log_path.read_text().splitlines())
        summary = {"steps_run": steps_run, "steps_planned": cfg.steps, "stopped_early": steps_run < cfg.steps,
                   "train_seconds": json.loads(log_path.read_text().splitlines()[-1])["time_s"]}
    phases.append({"phase": 1, **summary})
    if cfg.finetune_steps:
        snapshot(summary["steps_run"])
        ft = cfg.finetune()
        s2 = train(trainer, clips, ft, log_path, val_clips, val_every=max(1, ft.steps // 2), progress=progress,
                   snapshot=snapshot, phase=2, first_step=summary["steps_run"])
        phases.append({"phase": 2, **s2})
        summary = {"steps_run": summary["steps_run"] + s2["steps_run"],
                   "steps_planned": summary["steps_planned"] + s2["steps_planned"],
                   "stopped_early": summary["stopped_early"] or s2["stopped_early"],
                   "train_seconds": round(summary["train_seconds"] + s2["train_seconds"], 1)}
    summary["phases"] = phases
    times["train_s"] = round(time.perf_counter() - t, 1) if phase1_from is None else summary["train_seconds"]
    save_omni(out, raw, decoder, vision, audio)
    curves = loss_curves(out / "train_log.jsonl", out)

    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    n_params = {name: sum(p.numel() for p in m.parameters())
                for name, m in (("decoder", decoder), ("vision", vision), ("audio", audio))}
    metrics = {
        "seed": cfg.seed,
        "config": cfg.to_json(),
        "model": {"parameters": n_params, "total_parameters": sum(n_params.values()),
                  "model_safetensors_mb": round((out / "model.safetensors").stat().st_size / 2**20, 2),
                  "vocab_size": VOCAB_SIZE, "pattern": raw["text_config"]["hybrid_override_pattern"],
                  "stream_narration": raw["stream_narration"]},
        "data": {"train_clips": len(clips), "train_seconds": round(sum(c.duration for c in clips), 1),
                 "train_questions": len(items), "longest_train_clip_s": max(c.duration for c in clips),
                 "val_clips": len(val_clips)},
        "training": {**summary, **log_summary(rows)},
        "curves": [p.name for p in curves],
    }
    if evaluate:
        t = time.perf_counter()
        short = heldout_set(data_dir / "heldout", cfg.seed + 2000, cfg.eval_clips, 20.0, cfg.longest_train_s,
                            cfg.eval_questions_per_clip, cfg.workers)
        long = heldout_set(data_dir / "heldout-long", cfg.seed + 3000, cfg.eval_long_clips, 2 * cfg.longest_train_s,
                           2 * cfg.longest_train_s, cfg.eval_questions_per_clip, cfg.workers)
        metrics["eval"] = {
            "heldout": {"data": f"seed {cfg.seed + 2000}: {cfg.eval_clips} clips of 20-{cfg.longest_train_s:g} s",
                        "evs_off": evaluate_set(out, short, 0.0), f"evs_{EVS_EVAL_RATE}": evaluate_set(out, short, EVS_EVAL_RATE),
                        "evs_off_guided": evaluate_set(out, short, 0.0, guided_choice=True),
                        f"evs_{EVS_EVAL_RATE}_guided": evaluate_set(out, short, EVS_EVAL_RATE, guided_choice=True)},
            "heldout_2x_length": {"data": f"seed {cfg.seed + 3000}: {cfg.eval_long_clips} clips of "
                                          f"{2 * cfg.longest_train_s:g} s",
                                  "evs_off": evaluate_set(out, long, 0.0),
                                  f"evs_{EVS_EVAL_RATE}": evaluate_set(out, long, EVS_EVAL_RATE),
                                  "evs_off_guided": evaluate_set(out, long, 0.0, guided_choice=True),
                                  f"evs_{EVS_EVAL_RATE}_guided": evaluate_set(out, long, EVS_EVAL_RATE,
                                                                              guided_choice=True)},
        }
        metrics["eval"]["narration"] = {"data": metrics["eval"]["heldout"]["data"],
                                        **narration_accuracy(out, short.parent)}
        times["eval_s"] = round(time.perf_counter() - t, 1)
    times["total_s"] = round(time.perf_counter() - t0, 1)
    metrics["timings"] = times
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    write_model_card(out)
    return metrics


DEMO_CLIPS = ((20.0, 40.0), (20.0, 40.0), (55.0, 65.0))


def make_demo(out, seed: int = 7, lengths=DEMO_CLIPS) -> Path:
    """A few short held-out clips for the UI and the README (clip i of `seed`, lengths in the
    given ranges): `questions.json` (MMOU items, usable by `python -m app eval`) and
    `suggested.json` (per clip: one question per skill, and the timeline question)."""
    from app.evaluate import parse_item
    from recipes.synthetic.generate import generate_clip
    from recipes.synthetic.wordbank import load_wordbank

    from .data import TIMELINE_QUESTION

    out = Path(out)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    (out / "timelines").mkdir(exist_ok=True)
    bank = load_wordbank()
    items, suggested = [], []
    for index, (lo, hi) in enumerate(lengths):
        qs = generate_clip(out, seed, index, lo, hi, bank)
        items += qs
        picks, seen = [], set()
        for it in qs:
            if it["question_type"][0] not in seen:
                seen.add(it["question_type"][0])
                picks.append({"question_id": it["question_id"], "skill": it["question_type"][0],
                              "question": it["question"], "prompt": question_prompt(parse_item(it, "demo"))})
        suggested.append({"video": qs[0]["video"], "duration": qs[0]["video_duration"],
                          "questions": picks, "free_form": [TIMELINE_QUESTION]})
    (out / "questions.json").write_text(json.dumps(items, indent=1) + "\n")
    (out / "suggested.json").write_text(json.dumps(suggested, indent=1) + "\n")
    return out


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m recipes.train", description="train the bundled default model")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="data, tokenizer, training, checkpoint, held-out evaluation")
    r.add_argument("--out", type=Path, required=True, help="checkpoint folder to write (e.g. assets/default-model)")
    r.add_argument("--data", type=Path, default=Path(".cache/train-data"), help="data folder (clips, features)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--steps", type=int, default=None, help="optimisation steps (default: the shipped run's)")
    r.add_argument("--minutes", type=float, default=None, help="stop the loop after this many minutes")
    r.add_argument("--clips", type=float, default=None, help="scale the number of training clips (e.g. 0.1)")
    r.add_argument("--chunk-captions", type=int, default=None, metavar="STEPS",
                   help="steps of captions of single chunks, after the text phase (default: the shipped run's)")
    r.add_argument("--chunk-caption-mix", type=int, default=None, metavar="CLIPS",
                   help="clips of single-chunk caption rows added to every clip step (default: the shipped run's)")
    r.add_argument("--vision-lr-scale", type=float, default=None, metavar="SCALE",
                   help="the ViT's learning rate in the clip steps, relative to theirs (default: the shipped run's)")
    r.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation")
    r.add_argument("--phase1-from", type=Path, default=None,
                   help="a folder holding phase 1's weights (its log already in --out): run phase 2 only")
    r.add_argument("--init", type=Path, default=None,
                   help="continue this checkpoint (weights and tokenizer, same seed) with the clip steps alone")
    pr = sub.add_parser("probe", help="linear probes on a data folder's cached tower features")
    pr.add_argument("--data", type=Path, default=Path(".cache/train-data/seed0/train"))
    pr.add_argument("--model", type=Path, default=None, help="probe this checkpoint's trained vision tower (default: the seeded one)")
    c = sub.add_parser("card", help="redraw a run folder's curves and rewrite its metrics' log part and its card (README.md)")
    c.add_argument("--out", type=Path, required=True)
    n = sub.add_parser("narration", help="how well a narrating model captions the chunks of held-out clips")
    n.add_argument("--model", type=Path, required=True)
    n.add_argument("--data", type=Path, required=True, help="a folder with clips/*.mp4 and timelines/*.json")
    n.add_argument("--into-metrics", action="store_true",
                   help="also record the result as eval.narration in the model folder's metrics.json")
    n.add_argument("--show", action="store_true", help="also print every chunk's gold caption and the model's own")
    g = sub.add_parser("gold-captions", help="accuracy with the gold captions in context: perception taken out")
    g.add_argument("--model", type=Path, required=True)
    g.add_argument("--data", type=Path, default=Path(".cache/train-data/seed0/val"),
                   help="a cached data folder (items/, features/)")
    g.add_argument("--questions", type=int, default=12, help="questions a clip")
    rd = sub.add_parser("reading", help="teacher-forced: does the decoder name what each chunk holds, in the "
                                        "session and with the chunk read alone")
    rd.add_argument("--model", type=Path, required=True)
    rd.add_argument("--data", type=Path, default=Path(".cache/train-data/seed0/val"),
                    help="a cached data folder (items/, features/)")
    rc = sub.add_parser("recall", help="how many steps a decoder configuration needs to learn associative recall")
    rc.add_argument("--pattern", default=None, help="hybrid_override_pattern (default: the default model's)")
    rc.add_argument("--pairs", default="4,8,16", help="key-value pairs a row, one number per stage (a curriculum)")
    rc.add_argument("--steps", default="1100,900,1200", help="steps of each stage (one number: every stage)")
    rc.add_argument("--gaps", default="0", help="tokens between a query's key and its value, one number per stage "
                                                "(one number: every stage)")
    rc.add_argument("--end-ids", default=None, help="keys and values drawn below this id, one number per stage "
                                                    "(one number: every stage; default: RecallTask.end_id)")
    rc.add_argument("--lr", type=float, default=3e-3)
    rc.add_argument("--seed", type=int, default=0)
    rc.add_argument("--log", type=Path, default=Path(".cache/recall.jsonl"), help="one JSON line a step")
    tq = sub.add_parser("text-questions", help="the decoder on gold captions of fresh timelines: the questions "
                                                "with perception taken out and nothing to memorize")
    tq.add_argument("--out", type=Path, required=True, help="folder for the log (text_log.jsonl), tokenizer and decoder")
    tq.add_argument("--model", type=Path, default=None,
                    help="start from this checkpoint's decoder (default: the seeded decoder after the recall phase)")
    tq.add_argument("--pattern", default=None, help="a fresh decoder of this hybrid_override_pattern (no --model)")
    tq.add_argument("--steps", type=int, default=1500)
    tq.add_argument("--lr", type=float, default=1e-3)
    tq.add_argument("--every", type=int, default=250, help="steps between held-out evaluations")
    tq.add_argument("--timelines", type=int, default=2, help="fresh timelines a step")
    tq.add_argument("--questions", type=int, default=12, help="multiple-choice questions a timeline adds")
    tq.add_argument("--lookups", type=int, default=24, help='"When is X?" rows a timeline adds')
    tq.add_argument("--chains", type=int, default=0, help="chained rows a timeline adds (data.chain_rows)")
    tq.add_argument("--windows", type=int, default=0, help="rows a timeline adds asking a chunk's caption by its "
                                                           "second (data.window_rows)")
    tq.add_argument("--held-out", type=int, default=12, help="held-out timelines (about 11 questions each)")
    tq.add_argument("--seed", type=int, default=0)
    d = sub.add_parser("demo", help="write the demo clips and their suggested questions")
    d.add_argument("--out", type=Path, required=True)
    d.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    try:
        if args.command == "probe":
            from .probe import format_report, probe_report
            print(format_report(probe_report(args.data, model_dir=args.model)))
            return 0
        if args.command == "card":
            print(f"wrote {refresh_card(args.out)}")
            return 0
        if args.command == "narration":
            got = narration_accuracy(args.model, args.data, sys.stdout if args.show else None)
            print(json.dumps(got, indent=1))
            if args.into_metrics:
                path = args.model / "metrics.json"
                metrics = json.loads(path.read_text())
                metrics.setdefault("eval", {})["narration"] = {"data": str(args.data), **got}
                path.write_text(json.dumps(metrics, indent=1) + "\n")
            return 0
        if args.command == "gold-captions":
            torch.set_num_threads(TrainConfig.threads)
            print(json.dumps(gold_caption_accuracy(args.model, args.data, args.questions), indent=1))
            return 0
        if args.command == "reading":
            from .reading import format_reading, reading_accuracy
            torch.set_num_threads(TrainConfig.threads)
            got = reading_accuracy(args.model, args.data)
            print(format_reading(got))
            print(json.dumps(got))
            return 0
        if args.command == "recall":
            from .recall import RecallTask, recall_probe
            pairs, steps, gaps, ends = ([int(x) for x in v.split(",")] for v in (args.pairs, args.steps, args.gaps,
                                                                                  args.end_ids or str(RecallTask.end_id)))
            steps, gaps, ends = (v * len(pairs) if len(v) == 1 else v for v in (steps, gaps, ends))
            if not len(steps) == len(gaps) == len(ends) == len(pairs):
                raise ValueError(f"{len(steps)} numbers in --steps, {len(gaps)} in --gaps and {len(ends)} in --end-ids "
                                 f"for {len(pairs)} stages of --pairs")
            torch.set_num_threads(TrainConfig.threads)
            args.log.parent.mkdir(parents=True, exist_ok=True)
            print(json.dumps(recall_probe(args.pattern, list(zip(pairs, steps, gaps, ends)), args.lr, args.seed, args.log)))
            return 0
        if args.command == "text-questions":
            from .textqa import text_probe
            torch.set_num_threads(TrainConfig.threads)
            got = text_probe(args.out, args.model, args.seed, args.pattern, steps=args.steps, lr=args.lr, every=args.every,
                             timelines=args.timelines, questions=args.questions, lookups=args.lookups,
                             chains=args.chains, windows=args.windows, held_out=args.held_out)
            print(json.dumps(got))
            return 0
        if args.command == "demo":
            print(f"wrote {make_demo(args.out, args.seed)}")
            return 0
        cfg = TrainConfig(seed=args.seed)
        if args.steps is not None:
            cfg.steps = args.steps
        if args.minutes is not None:
            cfg.minutes = args.minutes
        if args.chunk_captions is not None:
            cfg.chunk_caption_steps = args.chunk_captions
        if args.chunk_caption_mix is not None:
            cfg.chunk_caption_mix = args.chunk_caption_mix
        if args.vision_lr_scale is not None:
            cfg.vision_lr_scale = args.vision_lr_scale
        if args.clips is not None:
            cfg.train_bands = tuple((lo, hi, max(1, round(n * args.clips))) for lo, hi, n in cfg.train_bands)
        data = args.data / f"seed{args.seed}"
        if args.init is not None and args.phase1_from is not None:
            raise ValueError("--init continues a checkpoint with phase 1; --phase1-from runs phase 2 alone: give one")
        m = run(args.out, cfg, data, evaluate=not args.no_eval, phase1_from=args.phase1_from, init=args.init)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"training": m["training"], "eval": m.get("eval", {}), "timings": m["timings"]}, indent=1))
    return 0
