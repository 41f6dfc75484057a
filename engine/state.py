"""Decoder state: what a session remembers of everything it has read.

Per Mamba layer, the conv state (the last K-1 inputs of the causal conv) and the SSM state
(fp32, heads x head_dim x state); per attention layer, the KV cache. NemotronH has no position
encoding, so nothing else is needed: a state plus new tokens is all the model needs to continue.

A `State` holds `batch` rows. Rows may have read different numbers of tokens (`lengths`); KV
caches are right-padded and attention masks each row at its own length, so sessions of any
lengths decode together.

Forking shares the KV cache: positions below the fork point never change, so the fork keeps
the parent's caches as read-only `prefix` segments and writes its own tokens into a new buffer.
A fork costs the Mamba states (a few MB), whatever the length of the stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .config import ATTENTION, MAMBA, DecoderConfig

_KV_BLOCK = 256  # KV buffers grow in multiples of this many positions


@dataclass
class Segment:
    """A read-only piece of a parent's KV caches: per attention layer (k, v), (1, hkv, n, d)."""
    kv: dict[int, tuple[torch.Tensor, torch.Tensor]]
    length: int


@dataclass
class State:
    batch: int
    lengths: list[int]                                       # tokens read, per row
    conv: dict[int, torch.Tensor] = field(default_factory=dict)   # (b, conv_dim, K-1)
    ssm: dict[int, torch.Tensor] = field(default_factory=dict)    # (b, h, p, n) fp32
    k: dict[int, torch.Tensor] = field(default_factory=dict)      # (b, hkv, capacity, d)
    v: dict[int, torch.Tensor] = field(default_factory=dict)
    prefix: list[Segment] = field(default_factory=list)           # shared, read-only (batch 1)
    # While speculative decoding verifies draft tokens, Mamba layers record what is needed to
    # keep only an accepted prefix of them (see `keep_first`).
    record: dict[int, tuple[torch.Tensor, list[torch.Tensor]]] | None = None

    @classmethod
    def empty(cls, pattern: str, cfg: DecoderConfig, batch: int = 1, dtype=torch.float32,
              device="cpu") -> "State":
        """Zero state for layers laid out as `pattern` (the decoder's, or the MTP layers')."""
        st = cls(batch=batch, lengths=[0] * batch)
        for i, kind in enumerate(pattern):
            if kind == MAMBA:
                st.conv[i] = torch.zeros(batch, cfg.mamba_conv_dim, cfg.conv_kernel - 1, dtype=dtype, device=device)
                st.ssm[i] = torch.zeros(batch, cfg.mamba_num_heads, cfg.mamba_head_dim, cfg.ssm_state_size,
                                        dtype=torch.float32, device=device)
            elif kind == ATTENTION:
                shape = (batch, cfg.num_key_value_heads, 0, cfg.head_dim)
                st.k[i] = torch.zeros(shape, dtype=dtype, device=device)
                st.v[i] = torch.zeros(shape, dtype=dtype, device=device)
        return st

    # ---- sizes ---------------------------------------------------------------------------
    @property
    def prefix_length(self) -> int:
        return sum(s.length for s in self.prefix)

    @property
    def length(self) -> int:
        """Tokens read by row 0 (a session's length)."""
        return self.lengths[0]

    def memory_bytes(self) -> dict[str, int]:
        """Bytes this state owns (`own`: Mamba states and KV buffers as allocated, `kv_used`:
        the part of them in use) and bytes it shares with the parent it was forked from."""
        own = sum(t.numel() * t.element_size() for d in (self.conv, self.ssm, self.k, self.v) for t in d.values())
        own_len = max(self.lengths) - self.prefix_length
        used = sum(t.shape[0] * t.shape[1] * t.shape[3] * t.element_size() * own_len
                   for d in (self.k, self.v) for t in d.values())
        shared = sum(k.numel() * k.element_size() + v.numel() * v.element_size()
                     for s in self.prefix for k, v in s.kv.values())
        return {"own": own, "kv_used": used, "shared": shared}

    # ---- KV cache ------------------------------------------------------------------------
    def reserve(self, extra: int) -> None:
        """Make room in every KV buffer for `extra` more positions on every row."""
        need = max(self.lengths) - self.prefix_length + extra
        for i in self.k:
            cap = self.k[i].shape[2]
            if need > cap:
                new_cap = max(need, 2 * cap)
                new_cap = -(-new_cap // _KV_BLOCK) * _KV_BLOCK
                for d in (self.k, self.v):
                    old = d[i]
                    buf = old.new_zeros(old.shape[0], old.shape[1], new_cap, old.shape[3])
                    buf[:, :, :cap] = old
                    d[i] = buf

    def advance(self, n: int) -> None:
        self.lengths = [x + n for x in self.lengths]

    # ---- fork, snapshots, batching -------------------------------------------------------
    def fork(self) -> "State":
        """A copy that continues independently. KV caches are shared, not copied."""
        if self.batch != 1:
            raise ValueError("fork() takes a one-row state (a session); split the batch first")
        own = self.length - self.prefix_length
        seg = Segment({i: (self.k[i][:, :, :own], self.v[i][:, :, :own]) for i in self.k}, own)
        child = State(batch=1, lengths=list(self.lengths),
                      conv={i: t.clone() for i, t in self.conv.items()},
                      ssm={i: t.clone() for i, t in self.ssm.items()},
                      k={i: t.new_zeros(*t.shape[:2], 0, t.shape[3]) for i, t in self.k.items()},
                      v={i: t.new_zeros(*t.shape[:2], 0, t.shape[3]) for i, t in self.v.items()},
                      prefix=self.prefix + ([seg] if own else []))
        return child

    def snapshot(self):
        """Cheap restore point: Mamba states copied, KV caches kept (restoring shortens them)."""
        return ({i: t.clone() for i, t in self.conv.items()}, {i: t.clone() for i, t in self.ssm.items()},
                list(self.lengths))

    def restore(self, snap) -> None:
        conv, ssm, lengths = snap
        self.conv, self.ssm, self.lengths = conv, ssm, lengths

    def keep_first(self, n: int, appended: int) -> None:
        """After a recorded forward of `appended` tokens, keep only the first `n` of them."""
        assert self.record is not None and 1 <= n <= appended
        for i, (conv_input, states) in self.record.items():
            k = self.conv[i].shape[2]
            self.conv[i] = conv_input[:, :, n:n + k].clone()
            self.ssm[i] = states[n - 1]
        self.record = None
        self.lengths = [x - (appended - n) for x in self.lengths]

    def materialize(self) -> "State":
        """The same state with any shared prefix copied into its own buffers."""
        if not self.prefix:
            return self
        own = self.length - self.prefix_length
        k = {i: torch.cat([s.kv[i][0] for s in self.prefix] + [self.k[i][:, :, :own]], dim=2) for i in self.k}
        v = {i: torch.cat([s.kv[i][1] for s in self.prefix] + [self.v[i][:, :, :own]], dim=2) for i in self.v}
        return State(batch=1, lengths=list(self.lengths), conv=dict(self.conv), ssm=dict(self.ssm), k=k, v=v)

    @staticmethod
    def stack(states: list["State"]) -> "State":
        """The rows of several states as one batch, in order (copies; KV right-padded)."""
        states = [s.materialize() for s in states]
        lengths = [n for s in states for n in s.lengths]
        cap = -(-max(lengths + [1]) // _KV_BLOCK) * _KV_BLOCK
        out = State(batch=len(lengths), lengths=lengths)
        first = states[0]
        out.conv = {i: torch.cat([s.conv[i] for s in states]) for i in first.conv}
        out.ssm = {i: torch.cat([s.ssm[i] for s in states]) for i in first.ssm}
        for src, dst in ((lambda s: s.k, out.k), (lambda s: s.v, out.v)):
            for i, t in src(first).items():
                buf = t.new_zeros(len(lengths), t.shape[1], cap, t.shape[3])
                r = 0
                for s in states:
                    used = max(s.lengths)
                    buf[r:r + s.batch, :, :used] = src(s)[i][:, :, :used]
                    r += s.batch
                dst[i] = buf
        return out

    def row(self, r: int) -> "State":
        """Row `r` as a one-row state (copies)."""
        n = self.lengths[r]
        return State(batch=1, lengths=[n],
                     conv={i: t[r:r + 1].clone() for i, t in self.conv.items()},
                     ssm={i: t[r:r + 1].clone() for i, t in self.ssm.items()},
                     k={i: t[r:r + 1, :, :n].clone() for i, t in self.k.items()},
                     v={i: t[r:r + 1, :, :n].clone() for i, t in self.v.items()})

    def drop_rows(self, keep: list[int]) -> None:
        """Keep only the rows listed (in that order), in place."""
        idx = torch.tensor(keep, dtype=torch.long)
        for d in (self.conv, self.ssm, self.k, self.v):
            for i in d:
                d[i] = d[i].index_select(0, idx.to(d[i].device))
        self.lengths = [self.lengths[r] for r in keep]
        self.batch = len(keep)
