"""Ad hoc: the recipe as one chain with keyed captions in every phase: the lookups alone on text,
then the keyed mix on text (questions with chains quoting captions, chained rows, window rows),
single chunks, then clip steps quoting captions. argv: out"""
import sys
from pathlib import Path


def main():
    from fusion.stream import Narration
    from recipes.train import config, data
    config.NARRATION["prefix"] = {"audio": "(heard from second {second}: ", "video": "(seen from second {second}: "}
    data.NARRATION = Narration.from_dict(config.NARRATION, "keyed")
    from recipes.train.config import TrainConfig
    from recipes.train.run import run
    cfg = TrainConfig(text_steps=1500, text_mix_steps=700, text_questions=12, text_chains=12, text_windows=24,
                      chunk_caption_steps=1000, quote_chains=True, window_rows=24, steps=700)
    run(Path(sys.argv[1]), cfg, Path(".cache/train-data/seed0"))


if __name__ == "__main__":
    main()
