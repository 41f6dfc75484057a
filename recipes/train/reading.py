"""Teacher-forced reading: does the decoder name what a chunk holds, and from what?

`narration` scores the captions a model writes itself, where one wrong caption is copied into the
next ones. Here every caption is given (teacher forcing) and, for each thing a chunk's gold caption
names, we ask whether the decoder's most likely next token is right on every token of its name
(`the red word DUCK`), and for things on screen on its colour and on its shape or word alone:

- in the session: the clip read as training reads it, every earlier chunk followed by its gold
  caption, so a thing still on screen can be copied from the caption before;
- alone: the chunk read right after the stream header (`Trainer.single_chunk_batch`), so the name
  can come only from the chunk's media.

Things are split into `new` (not named by the previous caption of their modality: only the media
tell) and `continuing` (named there: the session can copy them), things on screen also into shapes
and words (a flashed word is a word).

    python -m recipes.train reading --model DIR [--data .cache/train-data/seed0/val]
"""

from __future__ import annotations

from pathlib import Path

import torch

from app.timestamps import format_seconds

PARTS = ("name", "colour", "thing")


def caption_things_at(tok, timeline: dict, chunk: dict) -> list[tuple[dict, dict[str, tuple[int, int]]]]:
    """The events a chunk's gold caption (data.chunk_caption) names, each with the token ranges, in
    that caption's tokens, of its whole name and, on screen, of its colour and its shape or word
    (`a red star`, `the red word DUCK`: the second word and the last)."""
    from .data import NARRATION, caption_events, chunk_caption

    modality, whole = chunk["modality"], tok.encode(chunk_caption(timeline, chunk))
    text, got = NARRATION.opening(modality, chunk["t0"]), []

    def upto(text: str) -> int:
        ids = tok.encode(text)
        if ids != whole[:len(ids)]:
            raise RuntimeError(f"{timeline['clip_id']}: a caption's tokens do not split at {text!r}")
        return len(ids)

    for i, e in enumerate(caption_events(timeline, chunk)):
        text += "; " if i else ""
        bounds = [upto(text.rstrip(" "))]           # a word's token holds the space before it
        for j, word in enumerate(e["label"].split(" ")):
            text += (" " if j else "") + word
            bounds.append(upto(text))
        text += f" {format_seconds(e['t0'])}-{format_seconds(e['t1'])}"
        ranges = {"name": (bounds[0], bounds[-1])}
        if modality == "video":
            ranges.update(colour=(bounds[1], bounds[2]), thing=(bounds[-2], bounds[-1]))
        got.append((e, ranges))
    return got


def thing_group(event: dict, continuing: bool) -> str:
    """`new` or `continuing`, and on screen whether it is a shape or a word: the ViT reads shapes far
    better than words, so the two are reported apart."""
    kind = "continuing" if continuing else "new"
    if event["modality"] != "visual":
        return kind
    return f"{kind} {'shape' if event['kind'] == 'shape' else 'word'}"


@torch.inference_mode()
def reading_accuracy(model_dir: Path, folder: Path) -> dict:
    """Per modality and `thing_group` (new / continuing; on screen also shape / word): how many things,
    and the share whose name (and on screen, colour; shape or word) the decoder predicts right in the
    session and alone."""
    from .run import trained_on_cached
    from .train import decoder_forward

    trainer, clips = trained_on_cached(model_dir, folder)
    decoder, tok = trainer.decoder, trainer.tok
    counts: dict[str, dict] = {}

    def right(pred: torch.Tensor, want: torch.Tensor, at: int, a: int, b: int) -> bool:
        """Whether the predictions for caption tokens a..b-1 (the caption starting at `at`) are right."""
        return bool((pred[at + a - 1:at + b - 1] == want[at + a:at + b]).all())

    for clip in clips:
        every = list(range(len(clip.meta)))
        x, ids, is_caption = trainer.prefix(clip, captioned=set(every))
        hidden = decoder_forward(decoder, decoder.new_state(), inputs_embeds=x[None], logits="none").hidden[0]
        session = decoder.lm_head(hidden).argmax(-1)
        starts = [i for i in range(len(ids)) if is_caption[i] and not is_caption[i - 1]]
        xs, targets = trainer.single_chunk_batch([(clip, every)])
        alone = decoder.lm_head(decoder_forward(decoder, decoder.new_state(batch=len(every)), inputs_embeds=xs,
                                                logits="none").hidden).argmax(-1)
        before: dict[str, set] = {"video": set(), "audio": set()}
        for k, (meta, at) in enumerate(zip(clip.meta, starts)):
            things = caption_things_at(tok, clip.timeline, meta)
            first = int((targets[k] != -100).nonzero()[0]) + 1        # where the caption starts in row k
            want_alone = torch.full((targets.shape[1] + 1,), -100, dtype=torch.long)
            want_alone[1:] = targets[k]
            for e, ranges in things:
                group = counts.setdefault(meta["modality"], {}).setdefault(
                    thing_group(e, e["id"] in before[meta["modality"]]),
                    {"things": 0, **{f"{w}_{p}": 0 for w in ("session", "alone") for p in ranges}})
                group["things"] += 1
                for part, (a, b) in ranges.items():
                    group[f"session_{part}"] += right(session, ids, at, a, b)
                    group[f"alone_{part}"] += right(alone[k], want_alone, first, a, b)
            before[meta["modality"]] = {e["id"] for e, _ in things}
    return {m: {kind: {"things": g["things"], **{k: round(v / g["things"], 4) for k, v in g.items() if k != "things"}}
                for kind, g in sorted(groups.items())} for m, groups in sorted(counts.items())}


def format_reading(got: dict) -> str:
    """A table: one row per modality and kind of thing, session / alone for each part of a name."""
    lines = ["| modality | things | " + " | ".join(f"{p}: session / alone" for p in PARTS) + " |",
             "|---|---|" + "---|" * len(PARTS)]
    for modality, groups in got.items():
        for kind, g in groups.items():
            cells = [f"{g[f'session_{p}']:.1%} / {g[f'alone_{p}']:.1%}" if f"session_{p}" in g else "-" for p in PARTS]
            lines.append(f"| {modality}, {kind} | {g['things']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
