"""Sessions and generation: streaming prefill, forks, sampling, speculative and batched decoding.

A `Session` is one stream's decoder state. `prefill` appends tokens or embeddings in pieces of
any size; `fork` gives an independent copy that shares the KV cache, so a question can be
answered from a snapshot while the stream keeps appending to the original. `generate` streams
tokens from a session's current state; with an MTP head it can draft tokens and verify them in
one forward (self-speculative decoding, greedy output unchanged). `BatchDecoder` decodes many
sessions in one batch, with sessions joining and leaving between steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch

from .model import NemotronH
from .state import State


@dataclass
class SamplingParams:
    """temperature 0 is greedy; top_k 0 and top_p 1 switch those filters off."""
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    stop_ids: tuple[int, ...] = ()
    seed: int | None = None

    def __post_init__(self):
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


def sample(logits: torch.Tensor, p: SamplingParams, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token ids (b,) from logits (b, V)."""
    if p.greedy:
        return logits.argmax(-1)
    logits = logits.float() / p.temperature
    if p.top_k:
        kth = logits.topk(min(p.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if p.top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= p.top_p      # keep the smallest set reaching top_p
        logits = logits.scatter(1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@dataclass
class SpecStats:
    drafted: int = 0
    accepted: int = 0
    steps: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


class Session:
    """One stream's decoder state, with the logits after the last input."""

    def __init__(self, model: NemotronH, speculative: bool = False):
        if speculative and not model.cfg.num_nextn_predict_layers:
            raise ValueError("speculative decoding needs a checkpoint with MTP layers (num_nextn_predict_layers > 0)")
        self.model = model
        self.state = model.new_state()
        self.logits: torch.Tensor | None = None          # (1, V) after the last input
        # MTP keeps its own state, one position behind: pairs (hidden_t, input_{t+1}).
        self.mtp_state = model.new_mtp_state() if speculative else None
        self.pending_hidden: torch.Tensor | None = None  # (1, 1, H) hidden of the last input
        self.spec = SpecStats()

    @property
    def length(self) -> int:
        return self.state.length

    def memory_bytes(self) -> dict[str, int]:
        mem = self.state.memory_bytes()
        if self.mtp_state is not None:
            for k, v in self.mtp_state.memory_bytes().items():
                mem[k] += v
        return mem

    def check_room(self, n: int) -> None:
        """Raise before any work if `n` more tokens would pass the context length."""
        limit = self.model.cfg.max_position_embeddings
        if self.length + n > limit:
            raise ValueError(f"context length exceeded: the session holds {self.length} tokens, {n} more would pass "
                             f"the model's max_position_embeddings ({limit})")

    def prefill(self, ids: list[int] | torch.Tensor | None = None, embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Append token ids or embeddings (T, H) to the stream; returns the last logits (1, V)."""
        m = self.model
        if embeds is None:
            ids = torch.as_tensor(ids, dtype=torch.long).view(1, -1).to(m.device)
            if ids.numel() and (ids.min() < 0 or ids.max() >= m.cfg.vocab_size):
                raise ValueError(f"token ids must be in [0, {m.cfg.vocab_size}), got {int(ids.min())}..{int(ids.max())}")
            embeds = m.embed(ids)
        else:
            if embeds.shape[-1] != m.cfg.hidden_size or embeds.numel() % m.cfg.hidden_size:
                raise ValueError(f"embeddings must be (T, {m.cfg.hidden_size}), got {tuple(embeds.shape)}")
            embeds = embeds.reshape(1, -1, m.cfg.hidden_size).to(m.device, m.dtype)
        if embeds.shape[1] == 0:
            return self.logits
        self.check_room(embeds.shape[1])
        out = m(self.state, inputs_embeds=embeds, logits="last")
        if self.mtp_state is not None:
            self._mtp_append(out.hidden, embeds)
        self.logits = out.logits[:, -1]
        return self.logits

    def _mtp_append(self, hidden: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor | None:
        """Feed the MTP head the pairs that `hidden` (1, T, H) completes; returns its last output."""
        if self.pending_hidden is None:   # the stream's first input pairs with nothing before it
            prev, nxt = hidden[:, :-1], embeds[:, 1:]
        else:
            prev, nxt = torch.cat([self.pending_hidden, hidden[:, :-1]], 1), embeds
        self.pending_hidden = hidden[:, -1:]
        if prev.shape[1] == 0:
            return None
        return self.model.mtp_forward(self.mtp_state, prev, nxt)

    def fork(self) -> "Session":
        """An independent copy of this session; the KV cache is shared, not copied."""
        child = Session.__new__(Session)
        child.model, child.logits, child.spec = self.model, self.logits, SpecStats()
        child.state = self.state.fork()
        child.mtp_state = self.mtp_state.fork() if self.mtp_state is not None else None
        child.pending_hidden = self.pending_hidden
        return child


def generate(session: Session, params: SamplingParams, speculative: int = 0) -> Iterator[int]:
    """Stream new tokens from the session's current state (after a prefill).

    Each token is appended to the session as it is produced (the stop token too), so a later
    prefill continues the conversation. `speculative` = number of MTP draft tokens a step
    (greedy only; the session must have been made with `speculative=True`).
    """
    if session.logits is None:
        raise ValueError("prefill the session before generating")
    session.check_room(1)    # generation stops at the context length; it must be able to start
    room = session.model.cfg.max_position_embeddings - session.length
    if params.max_new_tokens > room:
        params = SamplingParams(**{**params.__dict__, "max_new_tokens": room})
    if speculative:
        if session.mtp_state is None:
            raise ValueError("speculative decoding needs Session(model, speculative=True)")
        if not params.greedy:
            raise ValueError("speculative decoding is implemented for greedy decoding only")
        yield from _generate_speculative(session, params, speculative)
        return
    gen = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
    logits = session.logits
    for _ in range(params.max_new_tokens):
        tok = int(sample(logits, params, gen)[0])
        logits = session.prefill([tok])
        yield tok
        if tok in params.stop_ids:
            return


def _generate_speculative(session: Session, params: SamplingParams, k: int) -> Iterator[int]:
    """Greedy decoding with the MTP head drafting k tokens a step and the model verifying them
    in one forward. Invariant at the top of the loop: the session has read everything before
    `tok` (the agreed next token); MTP has read the pairs up to the one before `pending_hidden`."""
    m = session.model
    emb = lambda ids: m.embed(torch.tensor([ids], device=m.device))
    produced = 0
    tok = int(session.logits.argmax(-1)[0])
    while True:
        yield tok
        produced += 1
        if tok in params.stop_ids or produced >= params.max_new_tokens:
            session.prefill([tok])
            return
        # 1. draft: MTP from (hidden of the last input, tok), then from its own output; rolled back after
        snap = session.mtp_state.snapshot()
        h = m.mtp_forward(session.mtp_state, session.pending_hidden, emb([tok]))
        drafts = []
        for j in range(k):
            drafts.append(int(m.logits(h)[0, -1].argmax()))
            if j + 1 < k:
                h = m.mtp_forward(session.mtp_state, h, emb([drafts[-1]]))
        session.mtp_state.restore(snap)
        # 2. verify [tok, d1..dk] in one forward; Mamba layers record their per-token states
        session.state.record = {}
        out = m(session.state, input_ids=torch.tensor([[tok] + drafts], device=m.device), logits="all")
        greedy = out.logits[0].argmax(-1).tolist()
        a = 0
        while a < k and drafts[a] == greedy[a]:
            a += 1
        session.spec.drafted += k
        session.spec.accepted += a
        session.spec.steps += 1
        # 3. the accepted drafts are emitted up to a stop token or the token budget
        keep = a
        for j, d in enumerate(drafts[:a]):
            if d in params.stop_ids or produced + j + 1 >= params.max_new_tokens:
                keep = j + 1
                break
        session.state.keep_first(keep + 1, k + 1)
        session.logits = out.logits[:, keep]
        # 4. MTP reads the kept pairs: (pending, tok), (h(tok), d1), ..., (h(d_keep-1), d_keep)
        hidden = out.hidden[:, :keep + 1]
        m.mtp_forward(session.mtp_state, torch.cat([session.pending_hidden, hidden[:, :-1]], dim=1),
                      emb([tok] + drafts[:keep]))
        session.pending_hidden = hidden[:, -1:]
        for d in drafts[:keep]:
            yield d
        produced += keep
        if keep < a or produced >= params.max_new_tokens or (keep and drafts[keep - 1] in params.stop_ids):
            return
        tok = greedy[a]


@dataclass
class _Slot:
    session: Session
    params: SamplingParams
    generator: torch.Generator | None
    produced: int = 0
    done: bool = False
    tokens: list[int] = field(default_factory=list)


class BatchDecoder:
    """Decode several sessions together: one forward a step for all of them.

    `join` adds a prefilled session (its state moves into the batch), `step` produces one token
    for every member, and finished members leave automatically (their state moves back into
    their session, which can be prefilled and joined again later). Membership can change
    between any two steps.
    """

    def __init__(self, model: NemotronH):
        self.model = model
        self.slots: list[_Slot] = []
        self.state: State | None = None
        self.logits: torch.Tensor | None = None   # (b, V)

    def __len__(self) -> int:
        return len(self.slots)

    def join(self, session: Session, params: SamplingParams) -> None:
        if session.logits is None:
            raise ValueError("prefill a session before it joins a batch")
        gen = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
        self.slots.append(_Slot(session, params, gen))
        parts = ([self.state] if self.state is not None else []) + [session.state]
        self.state = State.stack(parts)
        self.logits = torch.cat(([self.logits] if self.logits is not None else []) + [session.logits])

    def step(self) -> list[tuple[Session, int]]:
        """One token for each member; returns (session, token) pairs and retires finished ones."""
        if not self.slots:
            return []
        toks = torch.stack([sample(self.logits[r:r + 1], s.params, s.generator)[0] for r, s in enumerate(self.slots)])
        out = self.model(self.state, input_ids=toks[:, None], logits="last")
        self.logits = out.logits[:, -1]
        emitted = []
        for r, s in enumerate(self.slots):
            t = int(toks[r])
            s.tokens.append(t)
            s.produced += 1
            s.done = t in s.params.stop_ids or s.produced >= s.params.max_new_tokens
            emitted.append((s.session, t))
        self._retire()
        return emitted

    def leave(self, session: Session) -> None:
        """Take `session` out of the batch now; its state goes back into it."""
        for s in self.slots:
            if s.session is session:
                s.done = True
        self._retire()

    def has(self, session: Session) -> bool:
        return any(s.session is session for s in self.slots)

    def _retire(self) -> None:
        keep = [r for r, s in enumerate(self.slots) if not s.done]
        if len(keep) == len(self.slots):
            return
        for r, s in enumerate(self.slots):
            if s.done:   # the session gets its state back, continuing after its last token
                s.session.state = self.state.row(r)
                s.session.logits = self.logits[r:r + 1]
        self.slots = [self.slots[r] for r in keep]
        if keep:
            self.state.drop_rows(keep)
            self.logits = self.logits[keep]
        else:
            self.state, self.logits = None, None
