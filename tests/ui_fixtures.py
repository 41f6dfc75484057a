"""Fixtures of the UI tests and benchmark: a scripted Omni checkpoint, demo media, a browser.

`build_scripted_omni_checkpoint` writes a real Omni checkpoint (transformers' tiny
`NemotronH_Omni_Reasoning_V3`: RADIO vision tower, Parakeet audio tower, projectors, random
weights with O(1) activations) whose decoder is the bigram model of
`service_fixtures.build_scripted_checkpoint`: every mixer's output projection is zero, so the
logits depend on the last token only, and the output head makes each token of `SCRIPT` follow
the one before, from the `\\n` that ends the assistant header (`<think>\\n`) to `<|im_end|>`.
The towers still encode every uploaded frame and every microphone clip and the decoder still
prefills them; only the answer is known in advance, so a test can check what the browser shows
(the streamed text, the time spans the server annotates, where a click seeks) against it.
With reasoning off the prompt ends in `</think>`, which is in the script too: the answer is then
the part after `</think>`.

`launch_chromium` starts Debian's chromium through Playwright (never a downloaded browser) with a
fake microphone and camera.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent

# Reasoning with one time span, then the answer with its evidence span. A bigram model needs each
# token once: the tokenizer below is trained so that every word is one token, and the two spans
# are written in forms whose pieces differ ("[2–5 sec]" with an en dash, "6-9 s").
SCRIPT = "[2\u20135 sec] A tone plays</think>Heard 6-9 s"
REASONING_SPAN_MS = (2000, 5000)
EVIDENCE_SPAN_MS = (6000, 9000)
ANSWER_TEXT = "Heard 6-9 s"
VOCAB = 512

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--use-fake-device-for-media-stream",
                 "--use-fake-ui-for-media-stream", "--autoplay-policy=no-user-gesture-required"]


@torch.no_grad()
def build_scripted_omni_checkpoint(path: Path, script: str = SCRIPT, seed: int = 0) -> list[int]:
    """Write the checkpoint, its tokenizer and processor files to `path`; returns the script's ids."""
    from transformers import NemotronH_Omni_Reasoning_V3

    from engine.tokenizer import SAMPLE_CORPUS, Tokenizer, train_tokenizer
    from omni_builders import build_processor, omni_config, randomize_

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    train_tokenizer(path, texts=SAMPLE_CORPUS + [script, "\n"] * 20, vocab_size=VOCAB)
    tok = Tokenizer.from_dir(path)
    chain = tok.encode("\n")[-1:] + tok.encode(script) + [tok.token_id("<|im_end|>")]
    if len(set(chain)) != len(chain):
        raise ValueError(f"script tokens must be distinct for a bigram model: {[tok.decode([t]) for t in chain]}")

    cfg = omni_config("M*E")
    cfg.text_config.vocab_size = VOCAB
    torch.manual_seed(seed)
    model = NemotronH_Omni_Reasoning_V3(cfg).eval()
    randomize_(model, seed)
    lm = model.language_model
    for name, p in lm.named_parameters():
        if name.split(".")[-2:][0] in ("out_proj", "o_proj", "down_proj") or name.endswith("down_proj"):
            p.zero_()
    g = torch.Generator().manual_seed(seed)
    emb = lm.model.embeddings.weight
    emb.copy_(torch.randn(emb.shape, generator=g))
    lm.model.norm_f.weight.fill_(1.0)
    unit = emb / emb.pow(2).mean(-1, keepdim=True).sqrt()
    head = torch.zeros_like(lm.lm_head.weight)
    for a, b in zip(chain, chain[1:]):
        head[b] += 10.0 * unit[a] / emb.shape[1]
    lm.lm_head.weight.copy_(head)
    model.save_pretrained(path)
    build_processor(path).save_pretrained(path)
    return chain[1:-1]


def make_demo_folder(out: Path, seconds: int = 20, seed: int = 7) -> Path:
    """A demo folder as assets/demo/ holds it: clips/ and questions.json (recipes.synthetic)."""
    subprocess.run([sys.executable, "-m", "recipes.synthetic", "generate", "--seed", str(seed), "--clips", "1",
                    "--min-seconds", str(seconds), "--max-seconds", str(seconds), "--out", str(out)],
                   cwd=ROOT, check=True, capture_output=True, timeout=300)
    return out


def chromium_available() -> bool:
    return Path(CHROMIUM).exists() and shutil.which(CHROMIUM) is not None


def launch_chromium(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def write_corrupt_video(path: Path) -> Path:
    """An .mp4 that is not one: an ftyp box, then noise."""
    import numpy as np
    noise = np.random.default_rng(3).integers(0, 256, 40_000, dtype=np.uint8).tobytes()
    path.write_bytes(b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + noise)
    return path

