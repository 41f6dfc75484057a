"""Ad hoc: seconds a clip step takes, shipped settings vs keyed ones (quoted chains, 24 window rows),
with the suffix rows batched in two halves (the old length_groups) or by the new split. From the
shipped weights, the same clips in the same order for each grouping. argv: steps"""
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path


def halves(rows, **_):
    rows = sorted(rows, key=lambda r: len(r[0]) + len(r[1]))
    half = len(rows) // 2 if len(rows) >= 8 else 0
    return [g for g in (rows[:half], rows[half:]) if g]


def main():
    import torch
    from fusion.stream import Narration
    from recipes.train import config, data, train as train_mod
    from engine.tokenizer import Tokenizer
    from recipes.train.config import VOCAB_SIZE, TrainConfig
    from recipes.train.data import make_clips
    from recipes.train.model import new_model
    from recipes.train.run import _clips, load_trained
    torch.set_num_threads(2)
    steps = int(sys.argv[1])
    plain, keyed = dict(config.NARRATION["prefix"]), {"audio": "(heard from second {second}: ", "video": "(seen from second {second}: "}
    cfg0 = TrainConfig()
    items = make_clips(Path(".cache/train-data/train"), 0, cfg0.train_bands, model_seed=0, vocab_size=VOCAB_SIZE,
                       fps=cfg0.fps, audio_clip_s=cfg0.audio_clip_s, workers=0, desc="clips")
    clips = _clips(Path(".cache/train-data/train"), items)
    new_groups = train_mod.length_groups
    tok = Tokenizer.from_dir("assets/default-model")
    out = {}
    for name, prefix, extra in (("shipped", plain, {}), ("keyed", keyed, dict(quote_chains=True, window_rows=24))):
        config.NARRATION["prefix"] = prefix
        data.NARRATION = Narration.from_dict(config.NARRATION, name)
        for grouping, fn in (("halves", halves), ("split", new_groups)):
            train_mod.length_groups = fn
            _, d, v, a = new_model(0, VOCAB_SIZE)
            load_trained(Path("assets/default-model"), d, v, a)
            trainer = train_mod.Trainer(d, v, a, tok)
            cfg = replace(cfg0, steps=steps, warmup_steps=1, **extra)
            with tempfile.TemporaryDirectory() as tmp:
                train_mod.train(trainer, clips, cfg, Path(tmp) / "log.jsonl", progress=False)
                log = [json.loads(line) for line in (Path(tmp) / "log.jsonl").read_text().splitlines()]
            s = [r["step_s"] for r in log[1:]]
            out[f"{name}/{grouping}"] = {"mean_step_s": round(sum(s) / len(s), 3), "suffix_tokens": sum(r["suffix_tokens"] for r in log[1:]),
                                         "loss_first": log[0]["loss"], "clips": [r["clip"] for r in log][:5]}
            print(name, grouping, out[f"{name}/{grouping}"], flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
