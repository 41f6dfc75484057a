"""Ad hoc: the keyed text phase as a curriculum, from the recall phase (as the recipe's run makes it):
stage A lookups and window rows alone, then stage B the full mix (questions, chains, windows, lookups).
argv: out tokenizer_dir a_steps b_steps [a_windows]"""
import json
import shutil
import sys
from pathlib import Path


def main():
    import torch
    from fusion.stream import Narration
    from recipes.train import config, data
    config.NARRATION["prefix"] = {"audio": "(heard from second {second}: ", "video": "(seen from second {second}: "}
    data.NARRATION = Narration.from_dict(config.NARRATION, "keyed")
    from safetensors.torch import save_file
    from engine.tokenizer import Tokenizer
    from recipes.train.config import VOCAB_SIZE, TrainConfig
    from recipes.train.model import new_model
    from recipes.train.recall import chat_gap, recall_stages
    from recipes.train.textqa import train_text

    out, tok_dir, a_steps, b_steps = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    a_windows = int(sys.argv[5]) if len(sys.argv) > 5 else 24
    out.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tok_dir / name, out / name)
    torch.set_num_threads(2)
    tok = Tokenizer.from_dir(out)
    cfg = TrainConfig(seed=0)
    _, decoder, _, _ = new_model(0, VOCAB_SIZE)
    summary = {"recall": recall_stages(decoder, list(cfg.recall_stages), cfg.recall_lr, 0, out / "recall_log.jsonl",
                                       True, until=cfg.recall_until, gap_ids=chat_gap(tok))}
    summary["a"] = train_text(decoder, tok, a_steps, 3e-3, 0, out / "text_log_a.jsonl", questions=0, lookups=24,
                              chains=0, windows=a_windows, every=200)
    save_file({k: v.contiguous() for k, v in decoder.state_dict().items()}, str(out / "decoder_a.safetensors"))
    summary["b"] = train_text(decoder, tok, b_steps, 3e-3, 0, out / "text_log_b.jsonl", questions=12, lookups=24,
                              chains=12, windows=24, every=200)
    save_file({k: v.contiguous() for k, v in decoder.state_dict().items()}, str(out / "decoder_b.safetensors"))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
