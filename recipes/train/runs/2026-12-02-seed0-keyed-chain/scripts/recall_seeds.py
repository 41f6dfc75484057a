"""Ad hoc: how reliably the recall curriculum's first stages break through, per seed and setting.
The default model's seeded decoder (as `run` seeds it) trained by `recall.recall_stages` with the
run's `until` (0.9). argv: seed threads lr stages-json log   e.g. 1 1 3e-3 '[[4,4000]]' out.jsonl
A stage of four numbers (pairs, steps, gap, end_id) draws its keys and values below end_id."""
import json
import sys
from pathlib import Path

import torch


def main():
    from engine.checkpoint import init_random
    from recipes.train.config import VOCAB_SIZE, TrainConfig, omni_config
    from recipes.train.model import build_parts
    import dataclasses

    from recipes.train import recall
    from recipes.train.recall import recall_stages

    plain = recall.stage_task

    def stage_task(stage, *a, **kw):
        task = plain(stage[:3], *a, **kw)
        return dataclasses.replace(task, end_id=stage[3]) if len(stage) > 3 else task
    recall.stage_task = stage_task

    seed, threads, lr, stages, log = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), json.loads(sys.argv[4]), Path(sys.argv[5])
    torch.set_num_threads(threads)
    decoder = init_random(build_parts(omni_config(VOCAB_SIZE))[0], seed)
    got = recall_stages(decoder, [tuple(s) for s in stages], lr, seed, log, progress=False, until=TrainConfig.recall_until)
    print(json.dumps({"seed": seed, "lr": lr, "stages": got}))


if __name__ == "__main__":
    main()
