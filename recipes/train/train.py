"""The training loop: one clip a step, its media prefix shared by all its questions.

A step reads one clip as a session does (chat header, then its media chunks through the trained
projectors and `fusion.stream.chunk_input`, the engine's own path), runs the decoder over that
prefix once, then continues from the prefix's state with all the clip's questions as one batch
(each row: the question, the assistant header, the TA-CoT target) and with the timeline item.
The loss is the cross-entropy of the target tokens; gradients flow back through the shared
prefix into the decoder and both projectors. Rows of associative recall (recall.py) join every
step's loss with a weight, so the lookup skill of phase 0 is kept while the clips are learnt. The
towers' encoders are frozen (their features are cached, see data.py).

Expert balancing is aux-loss-free, as in Nemotron and DeepSeek-V3: after every step each MoE
layer's `e_score_correction_bias` moves by `balance_rate * sign(mean load - expert load)`, so
under-used experts are chosen more often; the routing weights themselves stay uncorrected.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from engine.model import MoE, NemotronH
from engine.state import State
from fusion.prompt import question_tail, stream_header
from fusion.stream import EvsStream, chunk_input
from kernels.moe import route

from .data import (Clip, chunk_caption, lookup_rows, prompt_and_target, route_chains, timeline_prompt_and_target,
                   window_rows)
from .recall import RecallTask, chat_gap, recall_batch, recall_loss, stage_task

# NemotronH.forward runs under inference_mode; its body is autograd-safe (the training paths of
# the kernels keep no in-place updates of saved tensors), so training calls it undecorated.
decoder_forward = NemotronH.forward.__wrapped__
TIMELINE_WEIGHT = 0.5       # the timeline item's tokens count half: it is long, and not what is asked


class ExpertLoad:
    """Counts the tokens each expert of each MoE layer receives (forward hooks), and moves the
    correction biases towards balance after a step."""

    def __init__(self, decoder: NemotronH):
        self.layers = [(i, b.mixer) for i, b in enumerate(decoder.backbone.layers) if isinstance(b.mixer, MoE)]
        self.counts = {i: torch.zeros(m.cfg.n_routed_experts) for i, m in self.layers}
        self.hooks = [m.register_forward_hook(self._hook(i)) for i, m in self.layers]

    def _hook(self, i):
        def count(moe, args, out):
            with torch.no_grad():
                x = args[0].reshape(-1, args[0].shape[-1]).float()
                c = moe.cfg
                ids, _ = route(F.linear(x, moe.gate.weight.float()), moe.gate.e_score_correction_bias.float(),
                               c.num_experts_per_tok, c.n_group, c.topk_group, c.norm_topk_prob, c.routed_scaling_factor)
                self.counts[i] += torch.bincount(ids.reshape(-1), minlength=c.n_routed_experts).float()
        return count

    def imbalance(self) -> float:
        """Mean over layers of (most-loaded expert's load / mean load): 1.0 is perfect balance."""
        vals = [float(c.max() / c.mean()) for c in self.counts.values() if c.sum() > 0]
        return sum(vals) / len(vals) if vals else 1.0

    @torch.no_grad()
    def update(self, rate: float) -> float:
        """Apply the bias update, reset the counts, return the step's imbalance."""
        imb = self.imbalance()
        for i, moe in self.layers:
            load = self.counts[i]
            moe.gate.e_score_correction_bias += rate * torch.sign(load.mean() - load)
            load.zero_()
        return imb

    def remove(self):
        for h in self.hooks:
            h.remove()


def expand_state(state: State, rows: int, room: int) -> State:
    """`rows` copies of a one-row state (conv / SSM states and the used KV cache, with space for
    `room` more positions), still in the autograd graph: continuing from it backpropagates into
    the prefix. The KV buffers are new tensors, so the suffix writes into them in place."""
    length = state.lengths[0]
    st = State(batch=rows, lengths=[length] * rows)
    st.conv = {i: t.expand(rows, *t.shape[1:]) for i, t in state.conv.items()}
    st.ssm = {i: t.expand(rows, *t.shape[1:]) for i, t in state.ssm.items()}
    for kv, src in ((st.k, state.k), (st.v, state.v)):
        for i, t in src.items():
            used = t[:, :, :length].expand(rows, -1, -1, -1)
            kv[i] = torch.cat([used, used.new_zeros(rows, t.shape[1], room, t.shape[3])], dim=2)
    return st


def evs_keep(video_embeds: torch.Tensor, rate: float) -> torch.Tensor:
    """The EVS mask a live session applies (EvsStream, tubelet by tubelet) to these embeddings."""
    evs = EvsStream(rate)
    with torch.no_grad():
        return torch.stack([evs.keep_mask(video_embeds[t:t + 1].detach())[0] for t in range(video_embeds.shape[0])])


class Batch:
    """Token ids of suffixes continuing one prefix: (prompt ids, target ids) per row, right-padded."""

    def __init__(self, rows: list[tuple[list[int], list[int]]], pad_id: int = 0):
        self.rows = rows
        width = max(len(p) + len(t) for p, t in rows)
        self.ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        self.target = torch.full((len(rows), width), -100, dtype=torch.long)   # label at each input position
        self.context = torch.full((len(rows), width), -100, dtype=torch.long)  # the prompt's own next tokens
        for r, (p, t) in enumerate(rows):
            seq = p + t
            self.ids[r, :len(seq)] = torch.tensor(seq)
            self.target[r, len(p) - 1:len(seq) - 1] = torch.tensor(t)         # position j predicts token j + 1
            self.context[r, :len(p) - 1] = torch.tensor(p[1:])

    @property
    def num_targets(self) -> int:
        return int((self.target != -100).sum())


def length_groups(rows: list, max_groups: int = 6, group_cost: int = 256) -> list[list]:
    """Suffix rows split by length into the batches that run fewest padded tokens, each batch
    counted `group_cost` tokens more (its own pass through the layers): the rows of a step range
    from 20-token lookups to 250-token reasonings, and two halves ran about twice the real tokens.
    Contiguous runs of the sorted lengths, chosen by dynamic programming (n is at most ~100)."""
    rows = sorted(rows, key=lambda r: len(r[0]) + len(r[1]))
    n = len(rows)
    if n == 0:
        return []
    width = [len(p) + len(t) for p, t in rows]
    # best[k][j]: least cost of the first j rows in k batches; cut[k][j]: where its last batch starts
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(max_groups + 1)]
    cut = [[0] * (n + 1) for _ in range(max_groups + 1)]
    best[0][0] = 0
    for k in range(1, max_groups + 1):
        for j in range(1, n + 1):
            for i in range(j):
                c = best[k - 1][i] + (j - i) * width[j - 1] + group_cost
                if c < best[k][j]:
                    best[k][j], cut[k][j] = c, i
    k = min(range(1, max_groups + 1), key=lambda k: best[k][n])
    groups, j = [], n
    while j:
        i = cut[k][j]
        groups.append(rows[i:j])
        j, k = i, k - 1
    return groups[::-1]


def continue_rows(decoder, state: State, batch: Batch) -> torch.Tensor:
    """Hidden states (rows, width, D) of a Batch of suffixes, each continuing the one-row `state`
    (gradients reach the prefix)."""
    st = expand_state(state, batch.ids.shape[0], batch.ids.shape[1])
    return decoder_forward(decoder, st, inputs_embeds=decoder.embed(batch.ids), logits="none").hidden


class Trainer:
    """Decoder + projectors + tokenizer, and the loss of a clip."""

    def __init__(self, decoder, vision, audio, tokenizer, image_token_id: int = 18, audio_token_id: int = 27):
        self.decoder, self.vision, self.audio, self.tok = decoder, vision, audio, tokenizer
        self.placeholder = {"video": image_token_id, "image": image_token_id, "audio": audio_token_id}
        self.header = tokenizer.encode(stream_header())
        self.end = tokenizer.token_id("<|im_end|>")
        self._suffix_cache: dict[str, tuple[list[int], list[int]]] = {}
        self.answer = "letter"          # what follows </think> in the targets (data.prompt_and_target)

    def suffix(self, key: str, question: str, target: str) -> tuple[list[int], list[int]]:
        if key not in self._suffix_cache:
            self._suffix_cache[key] = (self.tok.encode(question_tail(question)), self.tok.encode(target) + [self.end])
        return self._suffix_cache[key]

    def prefix(self, clip: Clip, evs_rate: float = 0.0, captioned=()) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(P, D) decoder input of the clip's session, through the projectors; its (P,) token ids
        (media positions hold their placeholder ids); and a (P,) mask of caption tokens. Chunk k in
        `captioned` is followed by its caption (data.chunk_caption), as a narrating model writes it."""
        embed = self.decoder.embed
        parts, ids, caption = [embed(torch.tensor([self.header]))[0]], list(self.header), [False] * len(self.header)
        for k, c in enumerate(self.clip_chunks(clip, evs_rate)):
            parts.append(chunk_input(c, self.tok, embed, self.placeholder[c.modality]))
            own = self.tok.encode(c.text())
            ids += own
            caption += [False] * len(own)
            if k in captioned:
                cap = self.tok.encode(chunk_caption(clip.timeline, clip.meta[k]))
                parts.append(embed(torch.tensor([cap]))[0])
                ids += cap
                caption += [True] * len(cap)
        return torch.cat(parts), torch.tensor(ids), torch.tensor(caption)

    def clip_chunks(self, clip: Clip, evs_rate: float = 0.0, only=None) -> list:
        """The clip's EmbeddingChunks through the ViT and the sound projector, EVS at `evs_rate`. With
        `only` (chunk indices), the ViT runs on those chunks' tubelets alone; other video chunks hold zeros."""
        if only is None:
            video = self.vision(clip.video.float(), clip.grid, video=True)
        else:
            seqs = sorted({clip.meta[k]["seq"] for k in only if clip.meta[k]["modality"] == "video"}) or [0]
            picked = self.vision(clip.video[seqs].float(), clip.grid, video=True)
            video = picked.new_zeros(clip.video.shape[0], *picked.shape[1:]).index_copy(0, torch.tensor(seqs), picked)
        keep = evs_keep(video, evs_rate) if evs_rate > 0 else None
        return clip.chunks(video, self.audio.projection(clip.audio), keep)

    def single_chunk_batch(self, rows: list[tuple[Clip, list[int]]]) -> tuple[torch.Tensor, torch.Tensor]:
        """The picked chunks of each (clip, chunk indices), each read alone after the stream header
        (its label and media, then its caption), as one right-padded batch: inputs (B, L, D) and
        targets (B, L), the caption's tokens at the positions that predict them and -100 elsewhere."""
        embed = self.decoder.embed
        header = embed(torch.tensor([self.header]))[0]
        seqs, targets = [], []
        for clip, picked in rows:
            chunks = self.clip_chunks(clip, only=picked)
            for k in picked:
                c, cap = chunks[k], self.tok.encode(chunk_caption(clip.timeline, clip.meta[k]))
                x = torch.cat([header, chunk_input(c, self.tok, embed, self.placeholder[c.modality]),
                               embed(torch.tensor([cap]))[0]])
                t = torch.full((x.shape[0],), -100, dtype=torch.long)
                t[x.shape[0] - len(cap) - 1:-1] = torch.tensor(cap)          # position j predicts token j + 1
                seqs.append(x)
                targets.append(t)
        width = max(x.shape[0] for x in seqs)
        return (torch.stack([F.pad(s, (0, 0, 0, width - s.shape[0])) for s in seqs]),
                torch.stack([F.pad(s, (0, width - s.shape[0]), value=-100) for s in targets]))

    def chunk_caption_loss(self, clips: list[Clip], rows_per_clip: int, rng: random.Random) -> tuple[torch.Tensor, int]:
        """Mean cross-entropy of the captions of `rows_per_clip` chunks of each clip, each chunk read
        alone (`single_chunk_batch`), all in one batch; and the caption tokens counted. Alone, a
        caption can come only from its chunk's media; in a session the model writes it mostly from
        the captions before (the seventh run: 0.45 nats a caption token in the session, 2.02 for the
        same chunks read alone)."""
        x, t = self.single_chunk_batch([(clip, rng.sample(range(len(clip.meta)), min(rows_per_clip, len(clip.meta))))
                                        for clip in clips])
        state = self.decoder.new_state(batch=x.shape[0])
        hidden = decoder_forward(self.decoder, state, inputs_embeds=x, logits="none").hidden
        where = t != -100
        return F.cross_entropy(self.decoder.lm_head(hidden[where]).float(), t[where]), int(where.sum())

    def rows(self, clip: Clip, items: list[dict]) -> list[tuple[list[int], list[int]]]:
        return [self.suffix(f"{it['question_id']}/{self.answer}", *prompt_and_target(it, self.answer)) for it in items]

    def timeline_row(self, clip: Clip) -> tuple[list[int], list[int]]:
        return self.suffix(clip.clip_id + "/timeline", *timeline_prompt_and_target(clip.timeline))

    def loss(self, clip: Clip, items: list[dict], timeline: bool, evs_rate: float = 0.0,
             context_weight: float = 0.0, captioned=(), caption_weight: float = 1.0,
             lookups=()) -> tuple[torch.Tensor, dict]:
        """Mean target-token cross-entropy of the clip's items (and its timeline item, weighted).
        With `context_weight`, the text the model reads (frame and audio labels, questions with their
        options) is predicted too, at that weight per token: free signal, those tokens are run anyway.
        The captions of the chunks in `captioned` are predicted at `caption_weight` per token.
        `lookups` are (key, question, target) rows (data.lookup_rows), counted like the items."""
        x, ids, is_caption = self.prefix(clip, evs_rate, captioned)
        state = self.decoder.new_state()
        out = decoder_forward(self.decoder, state, inputs_embeds=x[None], logits="none")
        context_nll, context_n, caption_nll = 0.0, 0, 0.0
        stats = {"prefix_tokens": x.shape[0], "qa_loss": 0.0, "qa_tokens": 0, "suffix_tokens": 0}
        nxt, hidden = ids[1:], out.hidden[0, :-1]
        text = (nxt != self.placeholder["video"]) & (nxt != self.placeholder["audio"])
        if context_weight:
            read = text & ~is_caption[1:]
            context_nll = F.cross_entropy(self.decoder.lm_head(hidden[read]).float(), nxt[read], reduction="sum")
            context_n = int(read.sum())
        if captioned:
            cap = is_caption[1:]
            caption_nll = F.cross_entropy(self.decoder.lm_head(hidden[cap]).float(), nxt[cap], reduction="sum")
            stats["caption_tokens"] = int(cap.sum())
            stats["caption_loss"] = float(caption_nll.detach()) / max(1, stats["caption_tokens"])
        parts = [("qa", Batch(group), 1.0) for group in length_groups(self.rows(clip, items))]
        parts += [("lookup", Batch(group), 1.0) for group in length_groups([self.suffix(*row) for row in lookups])]
        if timeline:
            parts.append(("timeline", Batch([self.timeline_row(clip)]), TIMELINE_WEIGHT))
        total, weight = caption_weight * caption_nll, 0.0
        for name, batch, w in parts:
            suffix = continue_rows(self.decoder, state, batch)
            where = batch.target != -100
            logits = self.decoder.lm_head(suffix[where]).float()
            nll = F.cross_entropy(logits, batch.target[where], reduction="sum")
            if context_weight:
                ctx = batch.context != -100
                context_nll = context_nll + F.cross_entropy(self.decoder.lm_head(suffix[ctx]).float(),
                                                            batch.context[ctx], reduction="sum")
                context_n += int(ctx.sum())
            n = batch.num_targets
            stats[f"{name}_loss"] = stats.get(f"{name}_loss", 0.0) + float(nll.detach())
            stats[f"{name}_tokens"] = stats.get(f"{name}_tokens", 0) + n
            stats["suffix_tokens"] += batch.ids.numel()
            total = total + w * nll
            weight += w * n
        for name in ("qa", "lookup", "timeline"):
            if stats.get(f"{name}_tokens"):
                stats[f"{name}_loss"] /= stats[f"{name}_tokens"]
        if context_n:
            stats["context_loss"] = float(context_nll.detach()) / context_n
            total = total + context_weight * context_nll
        return total / weight, stats


def _draw_evs(cfg, rng: random.Random) -> float:
    if rng.random() >= cfg.evs_share:
        return 0.0
    return round(rng.uniform(*cfg.evs_rates), 2)


class ClipSampler:
    """Clips in shuffled passes, by length band: band k joins once the run's progress reaches
    `band_start[k]` (short clips first: cheap steps while the basics are learnt), then every
    unlocked band is drawn in proportion to its clips."""

    def __init__(self, clips: list[Clip], cfg, rng: random.Random):
        self.rng = rng
        self.bands: list[list[Clip]] = [[] for _ in cfg.train_bands]
        for c in clips:                  # the first band that holds its length (else the first band)
            k = next((k for k, (lo, hi, _) in enumerate(cfg.train_bands) if lo <= c.duration <= hi), 0)
            self.bands[k].append(c)
        self.starts = (list(cfg.band_start) + [0.0] * len(self.bands))[:len(self.bands)]
        self.queues: list[list[Clip]] = [[] for _ in self.bands]

    def next(self, progress: float) -> Clip:
        open_ = [k for k, b in enumerate(self.bands) if b and self.starts[k] <= progress] or [0]
        k = self.rng.choices(open_, weights=[len(self.bands[j]) for j in open_])[0]
        if not self.queues[k]:
            self.queues[k] = list(self.bands[k])
            self.rng.shuffle(self.queues[k])
        return self.queues[k].pop()


def train(trainer: Trainer, clips: list[Clip], cfg, log_path: Path, val_clips: list[Clip] = (),
          val_every: int = 100, progress: bool = True, snapshot=None, phase: int = 1, first_step: int = 0) -> dict:
    """Run the optimisation; write one JSON line per step to `log_path` (phase 1 starts it, a later
    phase appends, its steps numbered on from `first_step`); return a summary.
    `snapshot(steps_done)`, if given, is called at each validation point (it writes the weights so
    far: a run that is stopped still leaves a checkpoint to evaluate)."""
    from tqdm import tqdm

    from .model import trainable_parameters

    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    d, v, a = trainer.decoder, trainer.vision, trainer.audio
    params = trainable_parameters(d, v, a)
    projector = {id(p) for m in (v.mlp1, a.projection) for p in m.parameters()}
    vit = {id(p) for p in v.parameters()} - projector

    def lr_scale(p) -> float:
        return cfg.projector_lr_scale if id(p) in projector else cfg.vision_lr_scale if id(p) in vit else 1.0

    groups: dict[tuple[float, bool], list] = {}     # (lr scale, weight decay) -> parameters
    for p in params:
        groups.setdefault((lr_scale(p), p.dim() >= 2), []).append(p)
    opt = torch.optim.AdamW([{"params": ps, "lr_scale": scale, "weight_decay": cfg.weight_decay if decay else 0.0}
                             for (scale, decay), ps in groups.items()], lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)
    trainer.answer = cfg.answer
    d.train()
    load = ExpertLoad(d)
    steps = cfg.steps
    sampler = ClipSampler(clips, cfg, rng)
    recall_rows = torch.Generator().manual_seed(cfg.seed + 7000)
    recall_task = (stage_task(cfg.recall_stages[-1], chat_gap(trainer.tok), cfg.recall_mix_rows) if cfg.recall_stages
                   else RecallTask.of(RecallTask.pairs, cfg.recall_mix_rows))
    start = time.perf_counter()
    deadline = start + 60 * cfg.minutes if cfg.minutes else math.inf
    stopped_early = False
    recent = []
    with open(log_path, "w" if phase == 1 else "a") as log, \
            tqdm(total=steps, desc="train" if phase == 1 else f"train, phase {phase}", unit="step", file=sys.stderr,
                 disable=not progress) as bar:
        for step in range(steps):
            if time.perf_counter() > deadline:
                stopped_early = True
                break
            clip = sampler.next(step / max(1, steps))
            items = clip.items if len(clip.items) <= cfg.max_questions else rng.sample(clip.items, cfg.max_questions)
            evs_rate = _draw_evs(cfg, rng)
            lr = cfg.lr_at(step, step / max(1, steps - 1))
            for g in opt.param_groups:
                g["lr"] = lr * g["lr_scale"]
            t0 = time.perf_counter()
            timeline = rng.random() < cfg.timeline_share
            captioned = {k for k in range(len(clip.meta)) if rng.random() < cfg.caption_share}
            if cfg.quote_chains:
                items = route_chains(clip.timeline, clip.meta, items)
            lookups = lookup_rows(clip.timeline)
            lookups = rng.sample(lookups, min(len(lookups), cfg.lookup_rows))
            if cfg.window_rows:
                by_second = window_rows(clip.timeline, clip.meta)
                lookups += rng.sample(by_second, min(len(by_second), cfg.window_rows))
            loss, stats = trainer.loss(clip, items, timeline, evs_rate, cfg.context_weight, captioned, cfg.caption_weight,
                                       lookups)
            total = loss
            if cfg.chunk_caption_mix:
                c_loss, stats["chunk_caption_tokens"] = trainer.chunk_caption_loss(
                    rng.sample(clips, min(cfg.chunk_caption_mix, len(clips))), cfg.chunk_caption_rows, rng)
                stats["chunk_caption_loss"] = float(c_loss.detach())
                total = total + c_loss
            if cfg.recall_mix_rows:
                r_loss, stats["recall_accuracy"] = recall_loss(d, *recall_batch(recall_task, d.cfg.vocab_size, recall_rows))
                stats["recall_loss"] = float(r_loss.detach())
                total = total + cfg.recall_mix_weight * r_loss
            opt.zero_grad(set_to_none=True)
            total.backward()
            gnorm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
            opt.step()
            imbalance = load.update(cfg.balance_rate)
            rec = {"step": first_step + step, **({"phase": phase} if phase != 1 else {}),
                   "time_s": round(time.perf_counter() - start, 2), "step_s": round(time.perf_counter() - t0, 3),
                   "loss": round(float(loss.detach()), 5), "lr": lr, "grad_norm": round(gnorm, 4), "evs": evs_rate,
                   "clip": clip.clip_id, "clip_s": clip.duration, "expert_imbalance": round(imbalance, 4),
                   **{k: (round(v, 5) if isinstance(v, float) else v) for k, v in stats.items()}}
            if val_clips and (step + 1) % val_every == 0 or val_clips and step + 1 == steps:
                rec.update({k: round(v, 5) for k, v in validate(trainer, val_clips, cfg).items()})
                if snapshot is not None:
                    snapshot(first_step + step + 1)
                d.train()
            log.write(json.dumps(rec) + "\n")
            log.flush()
            recent = (recent + [float(loss.detach())])[-20:]
            bar.set_postfix(loss=f"{sum(recent) / len(recent):.3f}", imb=f"{imbalance:.2f}")
            bar.update(1)
    load.remove()
    d.eval()
    return {"steps_run": step + (0 if stopped_early else 1), "steps_planned": steps, "stopped_early": stopped_early,
            "train_seconds": round(time.perf_counter() - start, 1)}


@torch.no_grad()
def validate(trainer: Trainer, clips: list[Clip], cfg) -> dict[str, float]:
    """Losses over held-out clips in the narrating layout (every chunk captioned, EVS off): the
    target tokens of all their items (no timeline item), `val_loss`, and the captions' tokens,
    `val_caption_loss`; each also with the next clip's media in place of the clip's own (cycled to
    its layout, `*_swapped_media`). Equal caption losses mean the model does not read the media."""
    trainer.decoder.eval()
    sums = dict.fromkeys(("val_loss", "val_loss_swapped_media", "val_caption_loss", "val_caption_loss_swapped_media"), 0.0)
    qa_n = cap_n = 0
    for k, clip in enumerate(clips):
        items = clip.items[: cfg.max_questions]
        other = clips[(k + 1) % len(clips)]
        fake = dataclasses.replace(clip, video=other.video[torch.arange(clip.video.shape[0]) % other.video.shape[0]],
                                   audio=other.audio[torch.arange(clip.audio.shape[0]) % other.audio.shape[0]])
        everything = set(range(len(clip.meta)))
        for media, suffix in ((clip, ""), (fake, "_swapped_media")):    # the same layout: the same token counts
            stats = trainer.loss(media, items, False, captioned=everything)[1]
            sums["val_loss" + suffix] += stats["qa_loss"] * stats["qa_tokens"]
            sums["val_caption_loss" + suffix] += stats["caption_loss"] * stats["caption_tokens"]
        qa_n += stats["qa_tokens"]
        cap_n += stats["caption_tokens"]
    return {k: v / max(1, cap_n if "caption" in k else qa_n) for k, v in sums.items()}


def train_chunk_captions(trainer: Trainer, clips: list[Clip], cfg, log_path: Path, progress: bool = True) -> dict:
    """The decoder learns to read the media, after it has learnt to look things up (before, it cost the
    lookup: the eighth run's text phase left its "When" spans at 0 of 24):
    `cfg.chunk_caption_steps` of AdamW (constant `cfg.chunk_caption_lr` after a 30-step warm-up;
    experts balanced as in training) on `Trainer.chunk_caption_loss` of `cfg.chunk_caption_clips`
    clips a step, one JSON line a step in `log_path`. From the seventh run's weights, 600 such steps
    took its own video captions from 0.0% to 14.1% precise and its audio captions from 42.3% to
    54.9% on the validation clips."""
    from tqdm import tqdm

    from .model import trainable_parameters

    rng = random.Random(cfg.seed + 11)
    d = trainer.decoder
    params = trainable_parameters(d, trainer.vision, trainer.audio)
    opt = torch.optim.AdamW(params, lr=cfg.chunk_caption_lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=cfg.weight_decay)
    load, losses, start = ExpertLoad(d), [], time.perf_counter()
    d.train()
    with open(log_path, "w") as log, tqdm(total=cfg.chunk_caption_steps, desc="chunk captions", unit="step",
                                          file=sys.stderr, disable=not progress) as bar:
        for step in range(1, cfg.chunk_caption_steps + 1):
            for g in opt.param_groups:
                g["lr"] = cfg.chunk_caption_lr * min(1.0, step / 30)
            loss, n = trainer.chunk_caption_loss(rng.sample(clips, min(cfg.chunk_caption_clips, len(clips))),
                                                 cfg.chunk_caption_rows, rng)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            load.update(cfg.balance_rate)
            losses.append(float(loss.detach()))
            log.write(json.dumps({"step": step, "loss": round(losses[-1], 5), "caption_tokens": n,
                                  "time_s": round(time.perf_counter() - start, 2)}) + "\n")
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
            bar.update(1)
    load.remove()
    d.eval()
    return {"steps": cfg.chunk_caption_steps, "seconds": round(time.perf_counter() - start, 1),
            "first_loss": losses[0] if losses else None,
            "final_loss": sum(losses[-20:]) / len(losses[-20:]) if losses else None}
