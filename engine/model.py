"""NemotronH: the hybrid Mamba2 / attention / MLP / MoE decoder of Nemotron 3, in plain PyTorch.

Read top to bottom: norms, the four mixers, the pre-norm residual block, the multi-token
prediction (MTP) block, and the model. Module names mirror the released checkpoint names
(`backbone.layers.3.mixer.in_proj.weight` is `model.backbone.layers[3].mixer.in_proj.weight`),
so loading needs no renaming beyond the prefixes handled in `loader.py`.

Every forward reads and updates a `State` (engine/state.py): Mamba layers carry their conv and
SSM states, attention layers append to their KV cache. There is no position encoding: position
lives in the Mamba state and the causal mask, so a state plus new tokens is all the model
needs to continue a stream, in pieces of any size.

Decoding on the CPU (one token per row, fp32, no autograd) takes a shorter road: each mixer's
`step` runs the C++ kernels of kernels/cpu, a handful of calls per layer instead of dozens of
small ops (`NemotronH.decode_step`). The general `forward` path defines what they compute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kernels import cpu
from kernels.attention import causal_attention
from kernels.linear import linear
from kernels.mamba import causal_conv1d, ssd_chunked, ssd_step
from kernels.moe import grouped_experts, route
from kernels.norm import gated_rms_norm, rms_norm

from .config import ATTENTION, MAMBA, MLP as MLP_KIND, MOE, DecoderConfig
from .state import State


class Linear(nn.Linear):
    """nn.Linear whose product takes the fast path of kernels.linear when decoding on the CPU."""

    def forward(self, x):
        return linear(x, self.weight, self.bias)


class RMSNorm(nn.Module):
    """Variance in fp32, weight multiplied in fp32, result cast back to the input dtype."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)


class GatedRMSNorm(nn.Module):
    """Mamba2's output norm: y * silu(z), then RMSNorm over groups of channels (all in fp32)."""

    def __init__(self, size: int, group_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.group_size, self.eps = group_size, eps

    def forward(self, y, z):
        return gated_rms_norm(y, z, self.weight, self.group_size, self.eps)


class Mamba2Mixer(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        h, d_inner, conv_dim = cfg.mamba_num_heads, cfg.mamba_d_inner, cfg.mamba_conv_dim
        self.in_proj = Linear(cfg.hidden_size, d_inner + conv_dim + h, bias=cfg.mamba_proj_bias)
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, cfg.conv_kernel, groups=conv_dim, bias=cfg.use_conv_bias)
        self.dt_bias = nn.Parameter(torch.zeros(h))
        self.A_log = nn.Parameter(torch.zeros(h))
        self.D = nn.Parameter(torch.ones(h))
        self.norm = GatedRMSNorm(d_inner, d_inner // cfg.n_groups, cfg.layer_norm_epsilon)
        self.out_proj = Linear(d_inner, cfg.hidden_size, bias=cfg.mamba_proj_bias)

    def forward(self, x, state: State, i: int):
        cfg = self.cfg
        b, T, _ = x.shape
        h, p, g, n = cfg.mamba_num_heads, cfg.mamba_head_dim, cfg.n_groups, cfg.ssm_state_size
        z, xBC, dt = self.in_proj(x).split([cfg.mamba_d_inner, cfg.mamba_conv_dim, h], dim=-1)
        conv_input = torch.cat([state.conv[i], xBC.transpose(1, 2)], dim=2) if state.record is not None else None
        xBC, state.conv[i] = causal_conv1d(xBC, state.conv[i], self.conv1d.weight, self.conv1d.bias)
        xs, B, C = xBC.split([cfg.mamba_d_inner, g * n, g * n], dim=-1)
        lo, hi = cfg.time_step_limit
        dt = F.softplus(dt.float() + self.dt_bias.float())
        if lo > 0 or hi < math.inf:
            dt = dt.clamp(lo, hi)
        A = -torch.exp(self.A_log.float())
        D = self.D.float()
        if T == 1 or state.record is not None:
            # Decode, or verifying draft tokens: step by step, keeping each step's state.
            ys, states = [], []
            for t in range(T):
                ys.append(ssd_step(state.ssm[i], xs[:, t].view(b, h, p), dt[:, t], A,
                                   B[:, t].view(b, g, n), C[:, t].view(b, g, n), D))
                if state.record is not None:
                    states.append(state.ssm[i].clone())
            y = torch.stack(ys, dim=1)
            if state.record is not None:
                state.record[i] = (conv_input, states)
        else:
            y, state.ssm[i] = ssd_chunked(xs.view(b, T, h, p), dt, A, B.view(b, T, g, n), C.view(b, T, g, n), D,
                                          state.ssm[i], cfg.chunk_size)
        y = self.norm(y.reshape(b, T, -1), z)
        return self.out_proj(y.to(x.dtype))

    def step(self, x, state: State, i: int):
        """One token per row on the CPU kernels: normed x (b, H) -> (b, H); states updated in place."""
        conv, ssm = state.conv[i], state.ssm[i]
        if not conv.is_contiguous():          # after a prefill: a view of the last window
            state.conv[i] = conv = conv.contiguous()
        if not ssm.is_contiguous():
            state.ssm[i] = ssm = ssm.contiguous()
        return cpu.mamba_step(x, self.in_proj.weight, self.in_proj.bias, conv, ssm, self.conv1d.weight, self.conv1d.bias,
                              self.dt_bias, self.A_log, self.D, self.norm.weight, self.out_proj.weight,
                              self.out_proj.bias, self.cfg.n_groups, self.norm.eps, *self.cfg.time_step_limit)


class Attention(nn.Module):
    """Causal GQA over the session's KV cache; no position encoding, scale head_dim ** -0.5."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        H, Hkv, D, bias = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.attention_bias
        self.q_proj = Linear(cfg.hidden_size, H * D, bias=bias)
        self.k_proj = Linear(cfg.hidden_size, Hkv * D, bias=bias)
        self.v_proj = Linear(cfg.hidden_size, Hkv * D, bias=bias)
        self.o_proj = Linear(H * D, cfg.hidden_size, bias=bias)

    def forward(self, x, state: State, i: int):
        cfg = self.cfg
        b, T, _ = x.shape
        H, Hkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        q = self.q_proj(x).view(b, T, H, D).transpose(1, 2)
        k = self.k_proj(x).view(b, T, Hkv, D).transpose(1, 2)
        v = self.v_proj(x).view(b, T, Hkv, D).transpose(1, 2)
        offsets = [n - state.prefix_length for n in state.lengths]   # own positions before this call
        K, V = state.k[i], state.v[i]
        o = offsets[0]
        ragged = any(x != o for x in offsets)
        if ragged:   # rows of different lengths decode one token each
            assert T == 1, "rows of different lengths can only decode one token at a time"
            rows, cols = torch.arange(b), torch.tensor(offsets)
            K[rows, :, cols], V[rows, :, cols] = k[:, :, 0], v[:, :, 0]
        else:
            K[:, :, o:o + T], V[:, :, o:o + T] = k, v
        Lk = max(offsets) + T
        keys, values = K[:, :, :Lk], V[:, :, :Lk]
        if state.prefix:
            out = _attend_segments(q, [s.kv[i] for s in state.prefix] + [(keys, values)], o)
        else:
            out = causal_attention(q, keys, values, offsets)
        return self.o_proj(out.transpose(1, 2).reshape(b, T, H * D))

    def step(self, x, state: State, i: int):
        """One token per row on the CPU kernels: normed x (b, H) -> (b, H), the KV cache appended."""
        if state.prefix:                      # a fork reading its parent's cache: the general path
            return self.forward(x[:, None], state, i)[:, 0]
        cfg = self.cfg
        b, H, Hkv, D = x.shape[0], cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        q, k, v = cpu.linears(x, [self.q_proj.weight, self.k_proj.weight, self.v_proj.weight],
                              [self.q_proj.bias, self.k_proj.bias, self.v_proj.bias])
        out = cpu.decode_attention(q.view(b, H, 1, D), state.k[i], state.v[i], [n + 1 for n in state.lengths],
                                   k.view(b, Hkv, D), v.view(b, Hkv, D))
        return cpu.linear(out.view(b, H * D), self.o_proj.weight, self.o_proj.bias)


def _attend_segments(q, segments, own_offset: int, max_scores: int = 1 << 24):
    """Attention of q (1, H, T, D) over read-only prefix segments, then the own cache whose
    first `own_offset` positions are old and last T are q's own (causal). Each part gives its
    output and log-sum-exp; weighting the outputs by softmax over those equals attention over
    all keys at once. The heads sharing a KV head go in as extra query rows (GQA)."""
    b, H, T, D = q.shape
    Hkv = segments[0][0].shape[1]
    r = H // Hkv
    qg = q.reshape(b, Hkv, r * T, D)
    outs, lses = [], []
    for k, v in segments[:-1]:                     # fully visible: the fused kernel
        o, lse = _flash(qg, k, v)
        outs.append(o)
        lses.append(lse.float())
    k, v = segments[-1]                            # own keys: causal, and short
    t_idx = torch.arange(T).repeat(r)              # query row -> its position among the T
    causal = (torch.arange(k.shape[2])[None, :] <= (own_offset + t_idx)[:, None]).to(q.device)
    step = max(1, max_scores // max(1, Hkv * k.shape[2]))
    o_parts, lse_parts = [], []
    for t0 in range(0, r * T, step):               # bound the score matrix on long prefills
        sc = torch.matmul(qg[:, :, t0:t0 + step] * D ** -0.5, k.transpose(-1, -2)).float()
        sc = sc.masked_fill(~causal[t0:t0 + step], float("-inf"))
        lse_parts.append(torch.logsumexp(sc, dim=-1))
        o_parts.append(torch.matmul(torch.exp(sc - lse_parts[-1][..., None]).to(q.dtype), v))
    outs.append(torch.cat(o_parts, dim=2))
    lses.append(torch.cat(lse_parts, dim=2))
    weights = torch.softmax(torch.stack(lses), dim=0)[..., None]    # (parts, b, Hkv, rT, 1)
    out = sum(w.to(o.dtype) * o for w, o in zip(weights, outs))
    return out.view(b, H, T, D)


def _flash(q, k, v):
    """softmax(q k^T / sqrt(D)) v and its log-sum-exp, without the score matrix in memory."""
    if (q.shape[2] <= cpu.PREFIX_MAX_ROWS and q.shape[3] % 16 == 0 and k.stride(-1) == 1 and v.stride(-1) == 1
            and cpu.enabled(q, k, v)):       # a question's few rows: each key read once for all of them
        return cpu.prefix_attention(q, k, v)
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None and q.device.type == "cpu":
        out, lse = op(q.contiguous(), k, v)   # the raw kernel trusts its inputs' strides
        return out, lse
    sc = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2)).float()
    lse = torch.logsumexp(sc, dim=-1)
    return torch.matmul(torch.exp(sc - lse[..., None]).to(q.dtype), v), lse


class MLP(nn.Module):
    """down(relu(up(x)) ** 2): NemotronH's MLP and each of its experts (no gate projection)."""

    def __init__(self, hidden: int, inner: int, bias: bool = False):
        super().__init__()
        self.up_proj = Linear(hidden, inner, bias=bias)
        self.down_proj = Linear(inner, hidden, bias=bias)

    def forward(self, x, state=None, i=None):
        return self.down_proj(F.relu(self.up_proj(x)).square())

    def step(self, x, state=None, i=None):
        """A few tokens x (N, H) on the CPU kernels."""
        h = cpu.linear(x, self.up_proj.weight, self.up_proj.bias, cpu.RELU2)
        return cpu.linear(h, self.down_proj.weight, self.down_proj.bias)


class Router(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(cfg.n_routed_experts, cfg.hidden_size))
        self.register_buffer("e_score_correction_bias", torch.zeros(cfg.n_routed_experts))


class MoE(nn.Module):
    """Routed experts (optionally in a latent space, LatentMoE) plus a shared expert."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        width = cfg.moe_latent_size or cfg.hidden_size
        self.gate = Router(cfg)
        self.experts = nn.ModuleList(MLP(width, cfg.moe_intermediate_size)   # experts carry no bias
                                     for _ in range(cfg.n_routed_experts))
        self.shared_experts = MLP(cfg.hidden_size, cfg.moe_shared_expert_intermediate_size, cfg.mlp_bias)
        if cfg.moe_latent_size:
            self.fc1_latent_proj = Linear(cfg.hidden_size, cfg.moe_latent_size, bias=cfg.mlp_bias)
            self.fc2_latent_proj = Linear(cfg.moe_latent_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def _expert_weights(self):
        """The experts' weights as two lists, rebuilt only when the parameters are replaced."""
        first = self.experts[0].up_proj.weight
        if getattr(self, "_weights", None) is None or self._weights[0][0] is not first:
            self._weights = ([e.up_proj.weight for e in self.experts], [e.down_proj.weight for e in self.experts])
        return self._weights

    def forward(self, x, state=None, i=None):
        cfg = self.cfg
        flat = x.reshape(-1, x.shape[-1])
        logits = F.linear(flat.float(), self.gate.weight.float())
        ids, weights = route(logits, self.gate.e_score_correction_bias.float(), cfg.num_experts_per_tok,
                             cfg.n_group, cfg.topk_group, cfg.norm_topk_prob, cfg.routed_scaling_factor)
        h = self.fc1_latent_proj(flat) if cfg.moe_latent_size else flat
        h = grouped_experts(h, ids, weights, *self._expert_weights()).to(x.dtype)
        if cfg.moe_latent_size:
            h = self.fc2_latent_proj(h)
        return h.view_as(x) + self.shared_experts(x)

    def step(self, x, state=None, i=None):
        """A few tokens x (N, H) on the CPU kernels: one call without a latent projection."""
        cfg, sh = self.cfg, self.shared_experts
        routing = (cfg.num_experts_per_tok, cfg.n_group, cfg.topk_group, cfg.norm_topk_prob, cfg.routed_scaling_factor)
        if not cfg.moe_latent_size:
            return cpu.moe_step(x, self.gate.weight, self.gate.e_score_correction_bias, *self._expert_weights(),
                                sh.up_proj.weight, sh.up_proj.bias, sh.down_proj.weight, sh.down_proj.bias, *routing)
        ids, weights = cpu.route(cpu.linear(x, self.gate.weight), self.gate.e_score_correction_bias, *routing)
        h = cpu.linear(x, self.fc1_latent_proj.weight, self.fc1_latent_proj.bias)
        h = cpu.grouped_experts(h, ids, weights, *self._expert_weights())
        return cpu.linear(h, self.fc2_latent_proj.weight, self.fc2_latent_proj.bias) + sh.step(x)


MIXERS = {MAMBA: Mamba2Mixer, ATTENTION: Attention, MLP_KIND: lambda c: MLP(c.hidden_size, c.intermediate_size, c.mlp_bias),
          MOE: MoE}


class Block(nn.Module):
    """h + mixer(RMSNorm(h))."""

    def __init__(self, cfg: DecoderConfig, kind: str):
        super().__init__()
        self.kind = kind
        self.norm = RMSNorm(cfg.hidden_size, cfg.layer_norm_epsilon)
        self.mixer = MIXERS[kind](cfg)

    def forward(self, h, state: State, i: int):
        return h + self.mixer(self.norm(h), state, i)


class MTPBlock(Block):
    """A layer of the MTP head. The first layer of a step fuses the next token's embedding with
    the model's hidden state, `eh_proj(cat[enorm(embed), hnorm(hidden)])`; the last ends with
    `final_layernorm`."""

    def __init__(self, cfg: DecoderConfig, kind: str, first: bool, last: bool):
        super().__init__(cfg, kind)
        if first:
            self.enorm = RMSNorm(cfg.hidden_size, cfg.layer_norm_epsilon)
            self.hnorm = RMSNorm(cfg.hidden_size, cfg.layer_norm_epsilon)
            self.eh_proj = Linear(2 * cfg.hidden_size, cfg.hidden_size, bias=False)
        if last:
            self.final_layernorm = RMSNorm(cfg.hidden_size, cfg.layer_norm_epsilon)
        self.first, self.last = first, last

    def forward(self, h, state: State, i: int, embeds=None):
        if self.first:
            h = self.eh_proj(torch.cat([self.enorm(embeds), self.hnorm(h)], dim=-1))
        h = super().forward(h, state, i)
        return self.final_layernorm(h) if self.last else h


class Backbone(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, kind) for kind in cfg.pattern)
        self.norm_f = RMSNorm(cfg.hidden_size, cfg.layer_norm_epsilon)


class MTP(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        step = len(cfg.mtp_pattern)
        self.layers = nn.ModuleList(
            MTPBlock(cfg, kind, first=j % step == 0, last=j % step == step - 1)
            for j, kind in enumerate(cfg.mtp_layer_pattern))


@dataclass
class Output:
    hidden: torch.Tensor          # (b, T, H), after norm_f
    logits: torch.Tensor | None   # (b, T or 1, vocab), fp32


class NemotronH(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.num_nextn_predict_layers:
            self.mtp = MTP(cfg)

    @property
    def dtype(self):
        return self.backbone.embeddings.weight.dtype

    @property
    def device(self):
        return self.backbone.embeddings.weight.device

    def new_state(self, batch: int = 1) -> State:
        return State.empty(self.cfg.pattern, self.cfg, batch, self.dtype, self.device)

    def new_mtp_state(self, batch: int = 1) -> State:
        return State.empty(self.cfg.mtp_pattern, self.cfg, batch, self.dtype, self.device)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.backbone.embeddings(ids)

    @torch.inference_mode()
    def forward(self, state: State, input_ids=None, inputs_embeds=None, logits: str = "last") -> Output:
        """Append tokens (ids (b, T) or embeddings (b, T, H)) to `state`; logits "last", "all" or "none"."""
        h = self.embed(input_ids) if inputs_embeds is None else inputs_embeds.to(self.dtype)
        T = h.shape[1]
        if T == 1 and state.record is None and not torch.is_grad_enabled() and cpu.enabled(h):
            return self.decode_step(state, h, logits)
        state.reserve(T)
        for i, layer in enumerate(self.backbone.layers):
            h = layer(h, state, i)
        state.advance(T)
        h = self.backbone.norm_f(h)
        return Output(h, self.logits(h, logits))

    def decode_step(self, state: State, h: torch.Tensor, logits: str = "last") -> Output:
        """`forward` for one token per row (h (b, 1, H)) on the CPU kernels: per layer the norm
        (with the previous residual added in) and the mixer's `step`."""
        b = h.shape[0]
        h, delta = h.view(b, -1), None
        state.reserve(1)
        for i, layer in enumerate(self.backbone.layers):
            h, x = cpu.add_rms_norm(h, delta, layer.norm.weight, layer.norm.eps)
            delta = layer.mixer.step(x, state, i)
        state.advance(1)
        _, h = cpu.add_rms_norm(h, delta, self.backbone.norm_f.weight, self.backbone.norm_f.eps)
        h = h.view(b, 1, -1)
        return Output(h, self.logits(h, logits))

    def logits(self, h, which: str = "last"):
        if which == "none":
            return None
        return self.lm_head(h[:, -1:] if which == "last" else h).float()

    @torch.inference_mode()
    def mtp_forward(self, mtp_state: State, hidden: torch.Tensor, next_embeds: torch.Tensor) -> torch.Tensor:
        """The first MTP step over pairs (hidden_t, embedding of token t+1): (b, T, H) each.
        Returns the MTP hidden states; `logits(...)` of them predict token t+2."""
        T = hidden.shape[1]
        mtp_state.reserve(T)
        h = hidden
        for j in range(len(self.cfg.mtp_pattern)):
            h = self.mtp.layers[j](h, mtp_state, j, next_embeds)
        mtp_state.advance(T)
        return h
