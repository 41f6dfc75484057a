"""Can a decoder configuration learn to look things up in its context? An associative-recall probe.

A question is answered by finding something earlier in the context and copying what sits next to
it. The default model's runs never learnt that from the clips: the questions' loss was the same
with the gold captions in context as without them, even with every event's time span written in
its caption. This probe measures the skill on its plainest form, multi-query associative recall
(Zoology, arXiv 2312.04927): a row is `pairs` (key, value) token pairs, a separator, then
`queries` of the keys, each followed by its value; the loss is on the values. Small models learn
it with a sharp transition after a plateau, and the plateau's length is what this measures for a
decoder pattern (`python -m recipes.train recall --pattern ...`), in minutes instead of a run.

Keys and values are drawn from disjoint halves of the ordinary token ids (above the special ones).

A question's answer does not follow its subject at once: the chat template's end of the user turn,
the assistant header and `<think>\n<t>` come between (9 tokens), and the decoder has to carry the
subject across them. With `gap` tokens between each query's key and its value the task measures
that. Starting from a decoder that recalled with no gap (16 pairs, 2-token values, lr 2e-3), a gap
of 7 stayed at chance (1.2% of first values after 300 steps), while stages of 1, 2 and 4 tokens were
learnt in turn, 400 steps each (76%, 83%, 86%).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class RecallTask:
    pairs: int = 16
    queries: int = 8
    rows: int = 32
    first_id: int = 64          # ids below are special tokens and single bytes the task leaves alone
    end_id: int = 1024          # and ids from here on: drawn from 1,536 ids, 4-pair recall was at 3.1% after
                                # 1,100 steps; from 1,024 (the stages' timing was set on) it was learnt by 1,037
    separator_id: int = 10      # the context's end
    gap: tuple = ()             # token ids between each query's key and its value

    @classmethod
    def of(cls, pairs: int, rows: int = 32, gap: tuple = ()) -> "RecallTask":
        """`pairs` pairs a row, as many queried as the default allows (all of them when fewer)."""
        return cls(pairs=pairs, queries=min(cls.queries, pairs), rows=rows, gap=tuple(gap))


# The gap of the recall probe's stages (python -m recipes.train recall): ids below RecallTask.first_id,
# which keys and values never use. A run uses its tokenizer's chat template instead (gap_ids).
PROBE_GAP = tuple(range(11, 20))


def recall_batch(task: RecallTask, vocab_size: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (rows, L), targets (rows, L)): BOS, key-value pairs, the separator, then queries, each
    its key, the task's gap tokens and its value; targets hold each value at the position before it
    (the key's, or the gap's last), -100 elsewhere."""
    half = (min(vocab_size, task.end_id) - task.first_id) // 2
    if task.queries > task.pairs or half < task.pairs:
        raise ValueError(f"recall task {task} does not fit a vocabulary of {vocab_size}")
    b, n, q = task.rows, task.pairs, task.queries
    keys = torch.stack([torch.randperm(half, generator=g)[:n] for _ in range(b)]) + task.first_id
    values = torch.randint(0, half, (b, n), generator=g) + task.first_id + half
    asked = torch.stack([torch.randperm(n, generator=g)[:q] for _ in range(b)])
    context = torch.stack([keys, values], 2).reshape(b, 2 * n)
    g_len = len(task.gap)
    gap = torch.tensor(task.gap, dtype=torch.long).expand(b, q, g_len)
    tail = torch.cat([keys.gather(1, asked)[..., None], gap, values.gather(1, asked)[..., None]], 2).reshape(b, -1)
    ids = torch.cat([torch.ones(b, 1, dtype=torch.long), context, torch.full((b, 1), task.separator_id), tail], 1)
    targets = torch.full_like(ids, -100)
    at = torch.arange(2 * n + 2 + g_len, ids.shape[1], 2 + g_len)      # the positions before the values
    targets[:, at] = ids[:, at + 1]
    return ids, targets


def recall_loss(decoder, ids: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(mean cross-entropy of the values, share of values the argmax gets right)."""
    from .train import decoder_forward

    hidden = decoder_forward(decoder, decoder.new_state(batch=ids.shape[0]), input_ids=ids, logits="none").hidden
    where = targets != -100
    logits = decoder.lm_head(hidden[where]).float()
    loss = F.cross_entropy(logits, targets[where])
    return loss, float((logits.argmax(-1) == targets[where]).float().mean())


def train_recall(decoder, steps: int, lr: float, seed: int, log, task: RecallTask = RecallTask(),
                 warmup: int = 50, progress: bool = True, until: float | None = None) -> dict:
    """`steps` of recall with a fresh AdamW at a constant `lr` after a linear warm-up (expert biases
    balanced as in training); one JSON line a step to the open file `log`. With `until`, the stage
    ends early once the 20-step mean accuracy reaches it. Returns the summary: steps run, seconds,
    the mean accuracy of the last 20 steps, and the first step whose 20-step mean accuracy reached
    50% (None if none did)."""
    from tqdm import tqdm

    from .config import TrainConfig
    from .train import ExpertLoad

    g = torch.Generator().manual_seed(seed)
    params = [p for p in decoder.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.05)
    load = ExpertLoad(decoder)
    decoder.train()
    start, recent, learnt_at, step = time.perf_counter(), [], None, -1
    vocab = decoder.cfg.vocab_size
    with tqdm(total=steps, desc=f"recall, {task.pairs} pairs", unit="step", file=sys.stderr, disable=not progress) as bar:
        for step in range(steps):
            for group in opt.param_groups:
                group["lr"] = lr * min(1.0, (step + 1) / warmup)
            loss, acc = recall_loss(decoder, *recall_batch(task, vocab, g))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            load.update(TrainConfig.balance_rate)
            recent = (recent + [acc])[-20:]
            if learnt_at is None and len(recent) == 20 and sum(recent) / 20 >= 0.5:
                learnt_at = step
            log.write(json.dumps({"pairs": task.pairs, "gap": len(task.gap), "end_id": task.end_id, "step": step,
                                  "time_s": round(time.perf_counter() - start, 2),
                                  "recall_loss": round(float(loss.detach()), 5), "recall_accuracy": round(acc, 4)}) + "\n")
            log.flush()
            bar.set_postfix(acc=f"{sum(recent) / len(recent):.2f}")
            bar.update(1)
            if until is not None and len(recent) == 20 and sum(recent) / 20 >= until:
                break
    load.remove()
    decoder.eval()
    return {"pairs": task.pairs, "queries": task.queries, "rows": task.rows, "gap": len(task.gap), "end_id": task.end_id,
            "steps": step + 1,
            "max_steps": steps,
            "seconds": round(time.perf_counter() - start, 1),
            "final_accuracy": round(sum(recent) / max(1, len(recent)), 4), "learnt_at_step": learnt_at}


def recall_probe(pattern: str | None, stages: list[tuple], lr: float, seed: int, log_path: Path,
                 progress: bool = True) -> dict:
    """A fresh decoder of the default model's configuration (with `pattern` as its
    hybrid_override_pattern if given), seeded as a run seeds it, trained on recall in `stages`
    of (pairs, steps[, gap[, end_id]]), one after the other (stage k draws its rows from seed + k). Few pairs first
    is a curriculum: `MEM*` learnt 4 pairs, then took 8 and 16 at once, where 16 from the start
    stayed at chance for 3,000 steps."""
    from engine.checkpoint import init_random

    from .config import VOCAB_SIZE, omni_config
    from .model import build_parts

    raw = omni_config(VOCAB_SIZE)
    if pattern:
        raw["text_config"]["hybrid_override_pattern"] = pattern
    decoder = init_random(build_parts(raw)[0], seed)
    return {"pattern": raw["text_config"]["hybrid_override_pattern"], "lr": lr, "seed": seed,
            "stages": recall_stages(decoder, stages, lr, seed, log_path, progress)}


def chat_gap(tok) -> tuple:
    """A run's gap ids: what its tokenizer puts between a question's last word and the answer's first
    span number (the end of the user turn, the assistant header, `<think>\n<t>`)."""
    from fusion.prompt import question_tail

    return tuple(tok.encode(question_tail("") + "<t>"))


def stage_task(stage: tuple, gap_ids: tuple = PROBE_GAP, rows: int = RecallTask.rows) -> RecallTask:
    """The task of a stage (pairs, steps[, gap[, end_id]]): its gap is the last `gap` of `gap_ids`;
    its keys and values are drawn below `end_id` (default RecallTask.end_id)."""
    pairs, gap = stage[0], (stage[2] if len(stage) > 2 else 0)
    if gap > len(gap_ids):
        raise ValueError(f"recall stage {tuple(stage)}: a gap of {gap} tokens, but only {len(gap_ids)} gap ids")
    task = RecallTask.of(pairs, rows, gap_ids[len(gap_ids) - gap:] if gap else ())
    return dataclasses.replace(task, end_id=stage[3]) if len(stage) > 3 else task


def recall_stages(decoder, stages: list[tuple], lr: float, seed: int, log_path: Path,
                  progress: bool = True, until: float | None = None, gap_ids: tuple = PROBE_GAP) -> list[dict]:
    """Train `decoder` on recall in `stages` of (pairs, steps[, gap[, end_id]]), one after the other, stage k
    drawing its rows from seed + k; one JSON line a step in `log_path`. With `until`, a stage ends
    once its accuracy reaches that (its steps are then a limit). Returns each stage's summary."""
    with open(log_path, "w") as log:
        return [train_recall(decoder, stage[1], lr, seed + k, log, stage_task(stage, gap_ids),
                             progress=progress, until=until) for k, stage in enumerate(stages)]
