"""Ad hoc: the recipe keyed from the start (keyed captions in every phase, the text phase with
questions, chains and window rows, the clip steps quoting captions). argv: out text_steps clip_steps"""
import sys
from pathlib import Path


def main():
    from fusion.stream import Narration
    from recipes.train import config, data
    config.NARRATION["prefix"] = {"audio": "(heard from second {second}: ", "video": "(seen from second {second}: "}
    data.NARRATION = Narration.from_dict(config.NARRATION, "keyed")
    from recipes.train.config import TrainConfig
    from recipes.train.run import run
    text_steps, clip_steps = int(sys.argv[2]), int(sys.argv[3])
    cfg = TrainConfig(text_steps=text_steps, text_questions=12, text_chains=12, text_windows=24,
                      quote_chains=True, window_rows=24, steps=clip_steps)
    run(Path(sys.argv[1]), cfg, Path(".cache/train-data"))


if __name__ == "__main__":
    main()
