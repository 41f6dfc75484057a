"""Vision pretraining: the ViT learns what is on screen from frames drawn fresh every step.

Trained only through the decoder's captions, the ViT learnt colour but not shape or word (a
linear probe on its features named the shape or word of 27% of the tubelets, the random ViT's
31%); trained on the 1,120 single-object tubelets of the cached clips with direct labels, it
learnt colour and memorized the shapes and words. Here every step draws new timelines with the
clip generator (recipes.synthetic: same objects, sizes, motion and renderer as the clips), takes
their tubelets at the clips' 1 fps through the same pre-processing as a clip's frames
(encoders.vision.preprocess_video), and classifies every object on screen in a tubelet, its colour
and its shape or word, from the features of the tokens its drawn box covers (weighted by how much
of each it covers). Per-token labels (each token the object covering most of it, or "none")
learnt colour but not shape or word in 2,500 steps.

Two linear heads read what `mlp1` reads; they are thrown away afterwards. `tubelet_batch` is the
data, `pretrain_vision` the loop, `VisionHeads.accuracy` the held-out figure the run records.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from encoders.vision import image_to_patches, preprocess_video


def mlp1_input(vision, patches, grid) -> torch.Tensor:
    """What `mlp1` reads (the pixel-shuffled ViT output) for tubelet patches (B, gh * gw, patch dim)."""
    got = []
    hook = vision.mlp1.register_forward_hook(lambda m, args, out: got.append(args[0]))
    try:
        vision(patches.float(), grid, video=True)
    finally:
        hook.remove()
    return got[0]


def label_names(words: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    """(colour classes, shape-or-word classes) of the generator's objects, "none" last in each."""
    from recipes.synthetic.timeline import COLOURS, SHAPES

    things = list(SHAPES) + [w.upper() for w in words["animal"] + words["object"]]
    return list(COLOURS) + ["none"], things + ["none"]


def object_cover(timeline, frames: list[int], rows: int, cols: int) -> np.ndarray:
    """(objects, rows * cols): how much of each token of a tubelet made of `frames` each visual event's
    drawn box covers, averaged over the frames."""
    from recipes.synthetic.media import object_box

    th, tw = timeline.height / rows, timeline.width / cols
    cover = np.zeros((len(timeline.visual), rows, cols))
    ys, xs = np.arange(rows) * th, np.arange(cols) * tw
    for k, e in enumerate(timeline.visual):
        for f in frames:
            box = object_box(timeline, e, f)
            if box is None:
                continue
            left, top, right, bottom = box
            h = np.clip(np.minimum(ys + th, bottom) - np.maximum(ys, top), 0, None) / th
            w = np.clip(np.minimum(xs + tw, right) - np.maximum(xs, left), 0, None) / tw
            cover[k] += h[:, None] * w[None, :] / len(frames)
    return cover.reshape(len(timeline.visual), rows * cols)


def tubelet_batch(rng: np.random.Generator, cfg, words, word_seconds, colours, things, clips: int = 4,
                  seconds: tuple[float, float] = (12.0, 20.0)):
    """Tubelets of `clips` fresh timelines at 1 fps: (patches (B, gh * gw, tubelet patch dim), grid,
    objects): for each object on screen in a tubelet, (tubelet, token weights (tokens,) summing to 1,
    colour class, shape-or-word class)."""
    from recipes.synthetic.media import draw_frame
    from recipes.synthetic.timeline import sample_timeline
    from encoders.vision import video_grid

    t = cfg.temporal_patch_size
    pixels, objects, n = [], [], 0
    for _ in range(clips):
        tl = sample_timeline("pretrain", float(rng.uniform(*seconds)), rng, words, word_seconds)
        frames = [round(s * tl.fps) for s in range(int(tl.duration))]
        frames = frames[: len(frames) // t * t]
        gh, gw = video_grid(tl.height, tl.width, cfg)
        video = torch.from_numpy(np.stack([np.asarray(draw_frame(tl, f)) for f in frames]))
        pixels.append(preprocess_video(video, cfg))
        for i in range(0, len(frames), t):
            cover = object_cover(tl, frames[i:i + t], gh // cfg.merge, gw // cfg.merge)
            for e, c in zip(tl.visual, cover):
                if c.sum() > 0:
                    objects.append((n, torch.from_numpy(c / c.sum()).float(), colours.index(e.colour),
                                    things.index(e.shape if e.kind == "shape" else e.word)))
            n += 1
    patches = image_to_patches(torch.cat(pixels), cfg.patch_size)
    return patches, (gh, gw), objects


class VisionHeads(nn.Module):
    """Colour and shape-or-word classifiers over the pixel-shuffled ViT features (`mlp1`'s input)."""

    def __init__(self, vision, colours: list[str], things: list[str]):
        super().__init__()
        width = vision.mlp1[1].in_features
        self.colour = nn.Linear(width, len(colours))
        self.thing = nn.Linear(width, len(things))

    def loss(self, vision, patches, grid, objects) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Cross-entropy of each object's colour and shape or word, read from its tokens' features
        weighted by how much of each it covers; and the predicted classes."""
        f = mlp1_input(vision, patches, grid)
        pooled = torch.stack([w @ f[i] for i, w, _, _ in objects])
        colour = torch.tensor([c for _, _, c, _ in objects])
        thing = torch.tensor([s for _, _, _, s in objects])
        lc, lt = self.colour(pooled), self.thing(pooled)
        loss = F.cross_entropy(lc, colour) + F.cross_entropy(lt, thing)
        return loss, (lc.argmax(-1) == colour), (lt.argmax(-1) == thing)

    @torch.no_grad()
    def accuracy(self, vision, batches) -> dict:
        """Object accuracy on held-out batches: colour, shape or word, both."""
        right_c = right_t = both = n = 0
        for patches, grid, objects in batches:
            _, rc, rt = self.loss(vision, patches, grid, objects)
            right_c, right_t, both, n = right_c + int(rc.sum()), right_t + int(rt.sum()), both + int((rc & rt).sum()), n + len(objects)
        return {"objects": n, "colour": right_c / max(1, n), "shape_or_word": right_t / max(1, n), "both": both / max(1, n)}


def pretrain_vision(vision, steps: int, seed: int, lr: float = 1e-3, clips: int = 4, eval_clips: int = 24,
                    log=None, progress: bool = True) -> dict:
    """Train `vision`'s ViT (not `mlp1`) for `steps` steps on fresh tubelets; returns the held-out
    token accuracies before and after, the losses and the time taken."""
    from tqdm import tqdm

    from recipes.synthetic.wordbank import load_wordbank

    bank = load_wordbank()
    words = bank.categories
    word_seconds = bank.word_seconds
    colours, things = label_names(words)
    torch.manual_seed(seed)
    heads = VisionHeads(vision, colours, things)
    held_rng = np.random.default_rng([seed, 1])
    held_out = [tubelet_batch(held_rng, vision.cfg, words, word_seconds, colours, things, clips=4)
                for _ in range(max(1, eval_clips // 4))]
    vit = [p for n, p in vision.named_parameters() if not n.startswith("mlp1.")]
    opt = torch.optim.AdamW(vit + list(heads.parameters()), lr=lr, betas=(0.9, 0.95), weight_decay=0.05)
    vision.train()
    before = heads.accuracy(vision, held_out)
    rng = np.random.default_rng([seed, 0])
    losses, t0 = [], time.time()
    bar = tqdm(range(steps), desc="vision", unit="step", file=sys.stderr, disable=not progress)
    for step in bar:
        cur = lr * min(1.0, (step + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * step / max(1, steps))))
        for g in opt.param_groups:
            g["lr"] = cur
        loss, _, _ = heads.loss(vision, *tubelet_batch(rng, vision.cfg, words, word_seconds, colours, things, clips))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vit + list(heads.parameters()), 1.0)
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        if log is not None:
            log({"phase": "vision", "step": step + 1, "loss": losses[-1], "lr": cur, "seconds": time.time() - t0})
    after = heads.accuracy(vision, held_out)
    return {"steps": steps, "seconds": round(time.time() - t0, 1), "first_loss": losses[0] if losses else None,
            "final_loss": float(np.mean(losses[-20:])) if losses else None, "held_out_before": before,
            "held_out_after": after, "colours": colours, "shapes_and_words": things}
