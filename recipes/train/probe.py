"""Linear probes on the towers' features: does what the questions ask reach the decoder?

    python -m recipes.train probe --data .cache/train-data/seed0/train [--model DIR]

The video features are the vision tower's (seeded, or trained from DIR) pixel-shuffled ViT output
of the cached patches; the audio features the frozen conformer's cached output.

For every tubelet with one object on screen (or none), the colour, the kind (shape or word) and
which shape or word it is; for every audio event inside one audio chunk, its kind and its word
(or sound). A softmax regression is fitted on the features of the first clips and scored on the
rest (clips held out whole); the majority class of the held-out part is the floor to beat.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import torch

AUDIO_TOKEN_S = 0.08        # the audio tower's token stride (8x subsampling of 10 ms frames)


def tubelet_features(vision, patches: torch.Tensor, grid) -> torch.Tensor:
    """What `mlp1` reads (the pixel-shuffled ViT output) for cached tubelet patches."""
    from .vision import mlp1_input

    with torch.inference_mode():
        return mlp1_input(vision, patches, grid)


def probe_samples(folder, vision) -> tuple[list, list]:
    """(video samples, audio samples) of a training data folder, the video features from `vision`:
    (feature, labels, clip id) each."""
    from .data import load_clip

    folder = Path(folder)
    video, audio = [], []
    for meta_path in sorted((folder / "features").glob("*.json")):
        cid = meta_path.stem
        meta = json.loads(meta_path.read_text())
        clip = load_clip(folder, cid, [])
        feats = {"video": tubelet_features(vision, clip.video, clip.grid), "audio": clip.audio}
        events = json.loads((folder / "timelines" / f"{cid}.json").read_text())["events"]
        seen = [e for e in events if e["modality"] == "visual" and e["kind"] in ("shape", "word")]
        heard = [e for e in events if e["modality"] == "audio"]
        v = a = 0
        for c in meta:
            if c["modality"] == "video":
                on = [e for e in seen if e["t0"] <= c["t0"] < e["t1"]]
                if len(on) <= 1:
                    e = on[0] if on else {"colour": "none", "kind": "none"}
                    video.append((feats["video"][v], {"colour": e["colour"], "kind": e["kind"],
                                                      "shape or word": e.get("shape") or e.get("word") or "none"}, cid))
                v += 1
                continue
            tokens = feats["audio"][a:a + c["n"]]
            a += c["n"]
            for e in heard:
                if c["t0"] <= e["t0"] and e["t1"] <= c["t1"]:
                    i0 = int((e["t0"] - c["t0"]) / AUDIO_TOKEN_S)
                    i1 = max(i0 + 1, -int(-(e["t1"] - c["t0"]) // AUDIO_TOKEN_S))
                    if tokens[i0:i1].numel():
                        audio.append((tokens[i0:i1].mean(0), {"kind": e["kind"], "word or sound": e.get("word") or e["label"]},
                                      cid))
    return video, audio


def linear_probe(x: torch.Tensor, labels: list[str], held_out: torch.Tensor, epochs: int = 200) -> dict:
    """Softmax regression on standardized features; accuracy on the held-out rows and their majority class."""
    classes = sorted(set(labels))
    y = torch.tensor([classes.index(c) for c in labels])
    train = ~held_out
    x = x.float()
    x = (x - x[train].mean(0)) / (x[train].std(0) + 1e-6)
    w = torch.zeros(x.shape[1], len(classes), requires_grad=True)
    b = torch.zeros(len(classes), requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=1e-2, weight_decay=1e-4)
    for _ in range(epochs):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(x[train] @ w + b, y[train]).backward()
        opt.step()
    with torch.no_grad():
        right = (x[held_out] @ w + b).argmax(1) == y[held_out]
    majority = collections.Counter(y[held_out].tolist()).most_common(1)[0][1]
    n = int(held_out.sum())
    return {"classes": len(classes), "held_out": n, "accuracy": float(right.float().mean()), "majority": majority / n}


def probe_report(folder, held_out_share: float = 0.2, seed: int = 0, model_dir=None) -> list[tuple[str, dict]]:
    """The probes on the seeded (untrained) vision tower, or on the trained one of `model_dir`."""
    from .config import VOCAB_SIZE
    from .model import new_model

    _, decoder, vision, audio = new_model(seed, VOCAB_SIZE)
    if model_dir is not None:
        from .run import load_trained
        load_trained(model_dir, decoder, vision, audio)
    torch.manual_seed(seed)
    video, audio = probe_samples(folder, vision)
    if not video or not audio:
        raise ValueError(f"{folder}: no cached features (features/*.json and *.safetensors) to probe")
    rows = []
    for name, samples, feature in (("video tubelet (all tokens)", video, lambda f: f.flatten()),
                                   ("audio event (mean of its tokens)", audio, lambda f: f)):
        clips = sorted({cid for _, _, cid in samples})
        test_clips = set(clips[int(len(clips) * (1 - held_out_share)):])
        held_out = torch.tensor([cid in test_clips for _, _, cid in samples])
        x = torch.stack([feature(f) for f, _, _ in samples])
        for key in samples[0][1]:
            rows.append((f"{name} -> {key}", linear_probe(x, [lab[key] for _, lab, _ in samples], held_out)))
    return rows


def format_report(rows) -> str:
    out = [f"{'probe':<48} {'classes':>7} {'held out':>8} {'accuracy':>8} {'majority':>8}"]
    for name, r in rows:
        out.append(f"{name:<48} {r['classes']:>7} {r['held_out']:>8} {r['accuracy']:>8.1%} {r['majority']:>8.1%}")
    return "\n".join(out)
