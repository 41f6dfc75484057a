"""metrics.json for the tenth run, whose process stopped at its held-out evaluation (an ImportError:
fusion.omni was edited while the run was going). The training part is rebuilt from the run's logs
as run() builds it; the vision pretraining's held-out figures were only in memory and are lost.
The eval part comes from .cache/pending/measure.py (run10c: the same weights, narration context
"chunk" as config.NARRATION now says). argv: run_dir measure.json data_dir"""
import json, sys
from pathlib import Path
import torch
from recipes.train.config import TrainConfig, VOCAB_SIZE
from recipes.train.model import new_model
from recipes.train.run import _clips, log_summary, EVS_EVAL_RATE
from recipes.train.data import make_clips
from recipes.train.card import write_model_card
from recipes.train.plots import loss_curves

out, measured, data = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text()), Path(sys.argv[3])
cfg = TrainConfig(seed=0)
rows_of = lambda name: [json.loads(l) for l in (out / name).read_text().splitlines()]
vision = rows_of("vision_log.jsonl")
phases = [{"phase": "vision", "task": "objects' colour and shape or word, fresh tubelets", "steps": len(vision),
           "seconds": round(vision[-1]["seconds"], 1), "first_loss": vision[0]["loss"],
           "final_loss": sum(r["loss"] for r in vision[-20:]) / 20,
           "held_out_lost": "the run stopped at its evaluation; the held-out figures were in memory only"}]
stages, recall = [], rows_of("recall_log.jsonl")
for r in recall:
    key = (r["pairs"], r.get("gap", 0))
    if not stages or stages[-1]["key"] != key or r["step"] <= stages[-1]["rows_"][-1]["step"]:
        stages.append({"key": key, "rows_": []})
    stages[-1]["rows_"].append(r)
out_stages = []
for st in stages:
    rs = st["rows_"]
    out_stages.append({"pairs": st["key"][0], "gap": st["key"][1], "steps": len(rs), "seconds": rs[-1]["time_s"],
                       "final_accuracy": round(sum(r["recall_accuracy"] for r in rs[-20:]) / len(rs[-20:]), 4)})
phases.append({"phase": 0, "task": "associative recall", "stages": out_stages,
               "seconds": round(sum(s["seconds"] for s in out_stages), 1)})
text = rows_of("text_log.jsonl")
phases.append({"phase": "text", "task": "lookups on gold captions of fresh timelines", "steps": cfg.text_steps,
               "lr": cfg.text_lr, "seed": cfg.seed, "seconds": text[-1]["time_s"], "evals": text})
cc = rows_of("chunk_caption_log.jsonl")
phases.append({"phase": "chunk captions", "task": "captions of single chunks, each read alone", "steps": len(cc),
               "seconds": cc[-1]["time_s"], "first_loss": cc[0]["loss"],
               "final_loss": sum(r["loss"] for r in cc[-20:]) / 20})
rows = rows_of("train_log.jsonl")
phases.append({"phase": 1, "steps_run": len(rows), "steps_planned": cfg.steps, "stopped_early": False,
               "train_seconds": rows[-1]["time_s"]})
common = dict(model_seed=cfg.seed, vocab_size=VOCAB_SIZE, fps=cfg.fps, audio_clip_s=cfg.audio_clip_s, workers=0)
items = make_clips(data / "train", cfg.seed, cfg.train_bands, desc="training clips", **common)
clips = _clips(data / "train", items)
raw, decoder, vis, audio = new_model(cfg.seed, VOCAB_SIZE)
n_params = {name: sum(p.numel() for p in m.parameters()) for name, m in (("decoder", decoder), ("vision", vis), ("audio", audio))}
summary = {k: v for k, v in phases[-1].items() if k != "phase"}
summary["phases"] = phases
ev_of = lambda m: {"evs_off": m["evs_off"], f"evs_{EVS_EVAL_RATE}": m["evs_0.7"], "evs_off_guided": m["evs_off_guided"],
                   f"evs_{EVS_EVAL_RATE}_guided": m["evs_0.7_guided"]}
train_s = (phases[0]["seconds"] + phases[1]["seconds"] + phases[2]["seconds"] + phases[3]["seconds"]
           + phases[4]["train_seconds"])
metrics = {
    "seed": cfg.seed, "config": cfg.to_json(),
    "model": {"parameters": n_params, "total_parameters": sum(n_params.values()),
              "model_safetensors_mb": round((out / "model.safetensors").stat().st_size / 2**20, 2),
              "vocab_size": VOCAB_SIZE, "pattern": raw["text_config"]["hybrid_override_pattern"]},
    "data": {"train_clips": len(clips), "train_seconds": round(sum(c.duration for c in clips), 1),
             "train_questions": len(items), "longest_train_clip_s": max(c.duration for c in clips), "val_clips": cfg.val_clips},
    "training": {**summary, **log_summary(rows)},
    "curves": [p.name for p in loss_curves(out / "train_log.jsonl", out)],
    "eval": {"heldout": {"data": f"seed {cfg.seed + 2000}: {cfg.eval_clips} clips of 20-{cfg.longest_train_s:g} s",
                         **ev_of(measured["heldout"])},
             "heldout_2x_length": {"data": f"seed {cfg.seed + 3000}: {cfg.eval_long_clips} clips of "
                                           f"{2 * cfg.longest_train_s:g} s", **ev_of(measured["long"])},
             "narration": {"data": f"seed {cfg.seed + 2000}: {cfg.eval_clips} clips of 20-{cfg.longest_train_s:g} s",
                           **measured["narration"]}},
    "timings": {"train_s": round(train_s, 1)},
    "recovered": "The run's process stopped at its held-out evaluation (fusion.omni, edited while it ran, no longer "
                 "imported against the fusion.stream it had loaded). This file was rebuilt from its logs "
                 "(.cache/pending/finish_run10.py, stop 21) and the evaluation run afterwards on the saved weights "
                 "with python -m app eval's own path; the vision pretraining's held-out figures are lost.",
}
(out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
print(write_model_card(out))
