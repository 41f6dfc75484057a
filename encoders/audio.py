"""The audio tower of Nemotron Omni: log-mel front end, Parakeet FastConformer encoder and the
`sound_projection` MLP, from a 16 kHz mono waveform to embeddings in the decoder's width.

    waveform --split--> clips of at most 30 s (a short tail zero-padded to 0.1 s)
             --front end--> pre-emphasis, |STFT|^2, 128 Slaney mel bins, log, per-bin mean/std
             --encoder--> 8x conv subsampling, Conformer blocks (half FFN, rel-pos attention,
                          conv module, half FFN, LayerNorm)
             --sound_projection--> RMSNorm, Linear, ReLU^2, Linear

Token count, per clip of L samples: `ceil((1 + L // 160) / 8)`, as transformers emits it. The
front end makes `1 + L // 160` frames but only `L // 160` are valid (the last is zeroed); when
that is a multiple of 8, the extra last token lies outside the encoder's mask: its attention row
is fully masked, so it attends uniformly to every position of the (batch-padded) clip.
transformers encodes the clips of one call as a batch padded to the longest clip, which only
that extra token can see; `encode` reproduces it by padding such a clip to the longest clip.

Clip splitting follows the serving processor of the released model (vLLM's `ParakeetExtractor`;
transformers' processor makes one clip of each audio): full 30 s clips, then the remainder, at
least 0.1 s. All clips of one audio fill one `<so_start>...<so_end>` span, in time order. `AudioStream` encodes a live waveform clip by clip with a
bounded buffer; with its default 30 s clips it gives exactly what `encode` gives for the whole
waveform. Shorter clips cut latency, but each clip is encoded on its own (no context across a
boundary) and each may carry its extra token, so the embeddings differ from a one-shot encode.

Module names are the checkpoint names after `sound_encoder.encoder.` (the encoder) and
`sound_projection.` (the projector).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.config import ConfigError
from engine.loader import load_weights
from engine.model import RMSNorm

ENCODER_PREFIX = "sound_encoder.encoder."
PROJECTION_PREFIX = "sound_projection."
LOG_GUARD = 2.0 ** -24     # added before the log: silence stays finite
NORM_EPS = 1e-5            # added to the per-bin std


class AudioInputError(ValueError):
    """A waveform the tower cannot encode: says what was wrong with it."""


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AudioConfig:
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 8
    head_dim: int = 128
    intermediate_size: int = 4096
    conv_kernel_size: int = 9
    subsampling_factor: int = 8
    subsampling_conv_channels: int = 256
    subsampling_conv_kernel_size: int = 3
    subsampling_conv_stride: int = 2
    num_mel_bins: int = 128
    attention_bias: bool = False       # Omni's Parakeet: no attention / FFN biases
    convolution_bias: bool = True
    scale_input: bool = False
    projection_hidden_size: int = 4096
    projection_bias: bool = False
    projection_eps: float = 1e-5
    llm_hidden_size: int = 2688
    sampling_rate: int = 16000
    # front end (the processor's feature extractor) and clip splitting
    hop_length: int = 160
    n_fft: int = 512
    win_length: int = 400
    preemphasis: float = 0.97
    clip_seconds: float = 30.0
    min_clip_seconds: float = 0.1
    source: str = field(default="<dict>", compare=False)

    @property
    def clip_samples(self) -> int:
        return round(self.clip_seconds * self.sampling_rate)

    @property
    def min_clip_samples(self) -> int:
        return round(self.min_clip_seconds * self.sampling_rate)

    @property
    def num_subsampling_stages(self) -> int:
        return int(math.log2(self.subsampling_factor))

    @classmethod
    def from_dict(cls, raw: dict, source: str = "<dict>") -> "AudioConfig":
        """The audio tower of an Omni config.json: `audio_config` (save_pretrained) or the legacy
        `sound_config` (released checkpoints); the decoder width from `text_config`/`llm_config`."""
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: config is not a JSON object")
        for key in ("audio_config", "sound_config"):
            if isinstance(raw.get(key), dict):
                d, where = raw[key], f"{source}:{key}"
                break
        else:
            raise ConfigError(f"{source}: no `audio_config` or `sound_config`: this checkpoint has no audio tower")
        text = next((raw[k] for k in ("text_config", "llm_config") if isinstance(raw.get(k), dict)), None)
        if text is None:
            raise ConfigError(f"{source}: no `text_config` or `llm_config`: the decoder width is unknown")

        def get(name, default, kind, src=d, at=where):
            value = src.get(name)
            if value is None:
                if default is None:
                    raise ConfigError(f"{at}: `{name}` is missing")
                return default
            ok = isinstance(value, bool) if kind is bool else (
                isinstance(value, (int, float)) and not isinstance(value, bool)
                and (kind is float or float(value).is_integer()))
            if not ok:
                raise ConfigError(f"{at}: `{name}` = {value!r}: expected {kind.__name__}")
            return kind(value)

        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise ConfigError(f"{where}: `hidden_act` is {act!r}; the Parakeet encoder uses 'silu'")
        hidden = get("hidden_size", 1024, int)
        heads = get("num_attention_heads", 8, int)
        cfg = cls(
            hidden_size=hidden,
            num_hidden_layers=get("num_hidden_layers", 24, int),
            num_attention_heads=heads,
            head_dim=get("head_dim", hidden // heads if heads > 0 else 0, int),
            intermediate_size=get("intermediate_size", 4096, int),
            conv_kernel_size=get("conv_kernel_size", 9, int),
            subsampling_factor=get("subsampling_factor", 8, int),
            subsampling_conv_channels=get("subsampling_conv_channels", 256, int),
            subsampling_conv_kernel_size=get("subsampling_conv_kernel_size", 3, int),
            subsampling_conv_stride=get("subsampling_conv_stride", 2, int),
            num_mel_bins=get("num_mel_bins", 128, int),
            attention_bias=get("attention_bias", False, bool),
            convolution_bias=get("convolution_bias", True, bool),
            scale_input=get("scale_input", False, bool),
            projection_hidden_size=get("projection_hidden_size", None, int),
            projection_bias=get("projection_bias", False, bool),
            projection_eps=get("projection_eps", 1e-5, float),
            llm_hidden_size=get("hidden_size", None, int, src=text, at=f"{source}:text_config"),
            sampling_rate=get("sampling_rate", 16000, int),
            source=where,
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        w = self.source

        def need(ok: bool, name: str, why: str):
            if not ok:
                raise ConfigError(f"{w}: `{name}` = {getattr(self, name)!r}: {why}")

        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "head_dim", "intermediate_size",
                     "subsampling_conv_channels", "num_mel_bins", "projection_hidden_size", "llm_hidden_size",
                     "sampling_rate", "hop_length", "n_fft", "win_length"):
            need(getattr(self, name) > 0, name, "must be positive")
        need(self.hidden_size % 2 == 0, "hidden_size", "must be even (sin/cos position encoding)")
        need(self.conv_kernel_size % 2 == 1, "conv_kernel_size", "must be odd ('same' depthwise convolution)")
        need(self.subsampling_conv_stride == 2, "subsampling_conv_stride", "only stride-2 stages are supported")
        need(self.subsampling_conv_kernel_size % 2 == 1, "subsampling_conv_kernel_size", "must be odd")
        f = self.subsampling_factor
        need(f >= 2 and f & (f - 1) == 0, "subsampling_factor", "must be a power of two (stride-2 stages)")
        need(self.num_mel_bins % f == 0, "num_mel_bins", f"must be a multiple of subsampling_factor ({f})")
        need(self.projection_eps > 0, "projection_eps", "must be positive")
        need(self.win_length <= self.n_fft, "win_length", f"must not exceed n_fft ({self.n_fft})")
        need(0.0 <= self.preemphasis < 1.0, "preemphasis", "must be in [0, 1)")
        need(self.min_clip_samples >= 2 * self.hop_length, "min_clip_seconds",
             "must span two hops (the per-bin std needs two frames)")
        need(self.clip_samples >= self.min_clip_samples, "clip_seconds", "must be at least min_clip_seconds")

    # ---- token accounting -----------------------------------------------------------------
    def num_clip_tokens(self, num_samples: int) -> int:
        """Tokens one clip of `num_samples` samples becomes: the subsampled length of its
        `1 + num_samples // hop` mel frames (the reference counts the zeroed last frame too)."""
        return _subsampled_length(1 + num_samples // self.hop_length, self)

    def clip_sizes(self, num_samples: int) -> list[int]:
        """Sample counts of the clips a waveform is cut into (a short tail is zero-padded)."""
        if num_samples <= 0:
            raise AudioInputError(f"audio: {num_samples} samples; need at least one")
        full, rest = divmod(num_samples, self.clip_samples)
        sizes = [self.clip_samples] * full
        if rest:
            sizes.append(max(rest, self.min_clip_samples))
        return sizes

    def num_audio_tokens(self, num_samples: int) -> int:
        """`<so_embedding>` tokens a waveform of `num_samples` samples becomes, over all its clips."""
        return sum(self.num_clip_tokens(n) for n in self.clip_sizes(num_samples))


def _subsampled_length(frames: int, cfg: AudioConfig) -> int:
    k, s = cfg.subsampling_conv_kernel_size, cfg.subsampling_conv_stride
    for _ in range(cfg.num_subsampling_stages):
        frames = (frames + 2 * ((k - 1) // 2) - k) // s + 1
    return frames


def num_audio_tokens(num_samples: int, config: AudioConfig | None = None) -> int:
    """`<so_embedding>` tokens for a 16 kHz waveform of `num_samples` samples (total over clips)."""
    return (config or AudioConfig()).num_audio_tokens(num_samples)


# ---------------------------------------------------------------------------------------------
# front end
# ---------------------------------------------------------------------------------------------

def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / (200.0 / 3)
    log = hz >= 1000.0
    return np.where(log, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (math.log(6.4) / 27), mel)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= 15.0, 1000.0 * np.exp((math.log(6.4) / 27) * (mel - 15.0)), mel * (200.0 / 3))


def slaney_mel_filters(sample_rate: int = 16000, n_fft: int = 512, n_mels: int = 128,
                       fmin: float = 0.0, fmax: float | None = None) -> torch.Tensor:
    """[n_mels, n_fft // 2 + 1] float32 triangular filters, evenly spaced on Slaney's mel scale,
    each scaled to unit area (`norm='slaney'`)."""
    fmax = sample_rate / 2 if fmax is None else fmax
    fft_hz = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    width = np.diff(edges)
    rising = (fft_hz[None, :] - edges[:-2, None]) / width[:-1, None]
    falling = (edges[2:, None] - fft_hz[None, :]) / width[1:, None]
    tri = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
    tri *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return torch.from_numpy(tri.astype(np.float32))


def log_mel(waves: torch.Tensor, cfg: AudioConfig, filters: torch.Tensor) -> torch.Tensor:
    """[B, n] fp32 waveforms (clips of equal length) -> [B, 1 + n // hop, mel] normalized log-mel.

    Each bin is normalized by its mean and (unbiased) std over the `n // hop` valid frames; the
    last frame, which the centred STFT adds, is zeroed as the reference does."""
    n = waves.shape[-1]
    x = torch.cat([waves[:, :1], waves[:, 1:] - cfg.preemphasis * waves[:, :-1]], dim=1)
    window = torch.hann_window(cfg.win_length, periodic=False, dtype=x.dtype, device=x.device)
    spec = torch.stft(x, cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length, window=window,
                      center=True, pad_mode="constant", return_complex=True)
    power = spec.real.square() + spec.imag.square()                     # [B, freq, frames]
    mel = torch.log(torch.matmul(filters, power) + LOG_GUARD).transpose(1, 2)
    valid = n // cfg.hop_length
    frames = mel[:, :valid]
    mean = frames.mean(dim=1, keepdim=True)
    std = ((frames - mean).square().sum(dim=1, keepdim=True) / (valid - 1)).sqrt()
    out = (mel - mean) / (std + NORM_EPS)
    out[:, valid:] = 0.0
    return out


# ---------------------------------------------------------------------------------------------
# FastConformer encoder
# ---------------------------------------------------------------------------------------------

def _conv2d(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """conv(x) by the fastest CPU path for its kind, keeping [B, C, H, W] laid out channels-last
    (depthwise convolutions run several times faster on it): the first conv (one input channel)
    and the pointwise convs as matrix products, the depthwise convs as themselves."""
    if conv.in_channels == 1:
        b, _, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
        oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        patches = F.unfold(x, (kh, kw), padding=(ph, pw), stride=(sh, sw)).transpose(1, 2)   # [B, oh*ow, kh*kw]
        out = F.linear(patches, conv.weight.reshape(conv.out_channels, kh * kw), conv.bias)
        return out.view(b, oh, ow, conv.out_channels).permute(0, 3, 1, 2)
    if conv.kernel_size == (1, 1) and conv.groups == 1:
        return F.linear(x.permute(0, 2, 3, 1), conv.weight.flatten(1), conv.bias).permute(0, 3, 1, 2)
    return conv(x)


class Subsampling(nn.Module):
    """8x in time and frequency: a conv, then (depthwise stride-2 conv, pointwise conv) stages,
    ReLU after each stage; positions past the valid length are zeroed after every conv. The
    [channels, freq] map of each time step is flattened channel-major into `linear`. In place
    where possible: at 256 channels a 30 s clip's first map is 100 MB."""

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        c, k, s = cfg.subsampling_conv_channels, cfg.subsampling_conv_kernel_size, cfg.subsampling_conv_stride
        p = (k - 1) // 2
        layers = [nn.Conv2d(1, c, k, stride=s, padding=p), nn.ReLU(inplace=True)]
        for _ in range(cfg.num_subsampling_stages - 1):
            layers += [nn.Conv2d(c, c, k, stride=s, padding=p, groups=c), nn.Conv2d(c, c, 1), nn.ReLU(inplace=True)]
        self.layers = nn.ModuleList(layers)      # indices = checkpoint names (ReLUs hold no weights)
        self.linear = nn.Linear(c * (cfg.num_mel_bins // cfg.subsampling_factor), cfg.hidden_size)

    def forward(self, features: torch.Tensor, valid: int) -> tuple[torch.Tensor, int]:
        """[B, T, mel] frames, the first `valid` real -> [B, T', hidden] and the valid count T'."""
        x = features.unsqueeze(1)                                 # [B, 1, T, mel]
        for layer in self.layers:
            if not isinstance(layer, nn.Conv2d):
                x = layer(x)
                continue
            x = _conv2d(x, layer)
            if layer.stride[0] != 1:
                valid = (valid + 2 * layer.padding[0] - layer.kernel_size[0]) // layer.stride[0] + 1
            x[:, :, valid:] = 0
        b, c, t, f = x.shape
        return self.linear(x.transpose(1, 2).reshape(b, t, c * f)), valid


def relative_positions(length: int, dim: int, device) -> torch.Tensor:
    """[2 * length - 1, dim] encodings of the relative positions length-1 .. -(length-1),
    sin and cos interleaved (Transformer-XL)."""
    pos = torch.arange(length - 1, -length, -1, device=device, dtype=torch.float32)
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))
    angles = pos[:, None] * inv_freq
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)


class FeedForward(nn.Module):
    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.linear1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.attention_bias)
        self.linear2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.attention_bias)

    def forward(self, x):
        return self.linear2(F.silu(self.linear1(x)))


class RelPositionAttention(nn.Module):
    """Multi-head attention with Transformer-XL relative positions: score(i, j) =
    (q_i + u) . k_j + (q_i + v) . W_r r(i - j), scaled by 1/sqrt(head_dim). The position
    term is passed to SDPA as an additive mask, which also carries the padding mask."""

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        h, d, inner = cfg.num_attention_heads, cfg.head_dim, cfg.num_attention_heads * cfg.head_dim
        self.num_heads, self.head_dim = h, d
        self.q_proj = nn.Linear(cfg.hidden_size, inner, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, inner, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, inner, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(inner, cfg.hidden_size, bias=cfg.attention_bias)
        self.relative_k_proj = nn.Linear(cfg.hidden_size, inner, bias=False)
        self.bias_u = nn.Parameter(torch.zeros(h, d))     # content bias
        self.bias_v = nn.Parameter(torch.zeros(h, d))     # position bias

    def forward(self, x, positions, masked):
        b, t, _ = x.shape
        h, d = self.num_heads, self.head_dim
        q, k, v = (p(x).view(b, t, h, d).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        scale = d ** -0.5
        r = self.relative_k_proj(positions).view(-1, h, d).permute(1, 2, 0)        # [h, d, 2t-1]
        full = torch.matmul((q + self.bias_v[:, None]) * scale, r)                # [b, h, t, 2t-1]
        # Column t-1-i+j of row i holds relative position i-j: a skewed view, no copy.
        bias = full.as_strided((b, h, t, t), (h * t * (2 * t - 1), t * (2 * t - 1), 2 * t - 2, 1), t - 1)
        if masked is not None:       # a fully masked row (the extra token) attends uniformly
            bias = bias.masked_fill(masked, torch.finfo(bias.dtype).min)
        out = F.scaled_dot_product_attention(q + self.bias_u[:, None], k, v, attn_mask=bias.contiguous())
        return self.o_proj(out.transpose(1, 2).reshape(b, t, h * d))


class BatchNorm(nn.Module):
    """Inference-only BatchNorm1d over [B, C, T]: the running statistics, no batch counter."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.eps = eps

    def forward(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


class ConvModule(nn.Module):
    """Pointwise conv + GLU, depthwise conv, BatchNorm (running statistics), SiLU, pointwise conv.
    The pointwise convs run as linear layers on [B, T, C]; padded positions are zeroed before the
    depthwise conv so it sees silence there."""

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        c, k, bias = cfg.hidden_size, cfg.conv_kernel_size, cfg.convolution_bias
        self.pointwise_conv1 = nn.Conv1d(c, 2 * c, 1, bias=bias)
        self.depthwise_conv = nn.Conv1d(c, c, k, padding=(k - 1) // 2, groups=c, bias=bias)
        self.norm = BatchNorm(c)
        self.pointwise_conv2 = nn.Conv1d(c, c, 1, bias=bias)

    def forward(self, x, valid: int):
        w1, w2 = self.pointwise_conv1, self.pointwise_conv2
        x = F.glu(F.linear(x, w1.weight.squeeze(-1), w1.bias), dim=-1)
        x[:, valid:] = 0
        x = self.depthwise_conv(x.transpose(1, 2).contiguous())    # on a strided view it is 10x slower
        x = F.silu(self.norm(x)).transpose(1, 2)
        return F.linear(x, w2.weight.squeeze(-1), w2.bias)


class ConformerBlock(nn.Module):
    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.feed_forward1 = FeedForward(cfg)
        self.self_attn = RelPositionAttention(cfg)
        self.conv = ConvModule(cfg)
        self.feed_forward2 = FeedForward(cfg)
        self.norm_feed_forward1 = nn.LayerNorm(cfg.hidden_size)
        self.norm_self_att = nn.LayerNorm(cfg.hidden_size)
        self.norm_conv = nn.LayerNorm(cfg.hidden_size)
        self.norm_feed_forward2 = nn.LayerNorm(cfg.hidden_size)
        self.norm_out = nn.LayerNorm(cfg.hidden_size)

    def forward(self, x, positions, masked, valid: int):
        x = torch.add(x, self.feed_forward1(self.norm_feed_forward1(x)), alpha=0.5)    # macaron: half FFNs
        x = x + self.self_attn(self.norm_self_att(x), positions, masked)
        x = x + self.conv(self.norm_conv(x), valid)
        x = torch.add(x, self.feed_forward2(self.norm_feed_forward2(x)), alpha=0.5)
        return self.norm_out(x)


class FastConformer(nn.Module):
    """Parakeet's encoder: [B, T, mel] log-mel frames (the first `valid` real) -> [B, T', hidden]."""

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.cfg = cfg
        self.subsampling = Subsampling(cfg)
        self.layers = nn.ModuleList(ConformerBlock(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, features: torch.Tensor, valid: int) -> torch.Tensor:
        x, valid = self.subsampling(features, valid)
        if self.cfg.scale_input:
            x = x * math.sqrt(self.cfg.hidden_size)
        t = x.shape[1]
        masked = None
        if valid < t:                  # pairs with a padded query or key
            pad = torch.arange(t, device=x.device) >= valid
            masked = pad[:, None] | pad[None, :]
        positions = relative_positions(t, self.cfg.hidden_size, x.device).to(x.dtype)
        for layer in self.layers:
            x = layer(x, positions, masked, valid)
        return x


class SoundProjection(nn.Module):
    """RMSNorm -> Linear -> ReLU^2 -> Linear: encoder width to the decoder's."""

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.norm = RMSNorm(cfg.hidden_size, cfg.projection_eps)
        self.linear1 = nn.Linear(cfg.hidden_size, cfg.projection_hidden_size, bias=cfg.projection_bias)
        self.linear2 = nn.Linear(cfg.projection_hidden_size, cfg.llm_hidden_size, bias=cfg.projection_bias)

    def forward(self, x):
        return self.linear2(F.relu(self.linear1(self.norm(x))).square())


# ---------------------------------------------------------------------------------------------
# the tower
# ---------------------------------------------------------------------------------------------

class AudioChunk(NamedTuple):
    """One encoded clip: media time span in seconds and its [tokens, llm_hidden] embeddings."""
    t0: float
    t1: float
    embeddings: torch.Tensor


def check_waveform(wave, where: str = "audio") -> torch.Tensor:
    """A 1-D float tensor of finite samples, as fp32 on its device; AudioInputError otherwise."""
    if isinstance(wave, np.ndarray):
        wave = torch.from_numpy(wave)
    if not isinstance(wave, torch.Tensor):
        raise AudioInputError(f"{where}: expected a 1-D float tensor of samples, got {type(wave).__name__}")
    if wave.dim() != 1:
        raise AudioInputError(f"{where}: expected a 1-D (mono) waveform, got shape {list(wave.shape)}; "
                              "downmix multi-channel audio first")
    if not wave.is_floating_point():
        raise AudioInputError(f"{where}: expected float samples in [-1, 1], got {wave.dtype}")
    wave = wave.float()
    if not bool(torch.isfinite(wave).all()):
        bad = int((~torch.isfinite(wave)).sum())
        raise AudioInputError(f"{where}: {bad} of {wave.numel()} samples are NaN or infinite")
    return wave


class AudioTower(nn.Module):
    """Encoder + projection. `encode(wave)` -> [num_audio_tokens(len(wave)), llm_hidden]."""

    def __init__(self, cfg: AudioConfig, batch_clips: int = 1):
        super().__init__()
        self.cfg = cfg
        # Clips per forward. One keeps the CPU's peak memory at one clip's (a 30 s clip is already
        # 376 rows for every product); raise it on a GPU.
        self.batch_clips = batch_clips
        self.encoder = FastConformer(cfg)
        self.projection = SoundProjection(cfg)
        self.register_buffer("mel_filters", slaney_mel_filters(cfg.sampling_rate, cfg.n_fft, cfg.num_mel_bins),
                             persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.projection.linear1.weight.dtype

    def num_audio_tokens(self, num_samples: int) -> int:
        return self.cfg.num_audio_tokens(num_samples)

    def forward(self, waves: torch.Tensor, pad_frames: int | None = None) -> torch.Tensor:
        """[B, n] clips of equal length -> [B, num_clip_tokens(n), llm_hidden]. `pad_frames`
        zero-pads the features as a batch with a longer clip would (seen by the extra token only)."""
        feats = log_mel(waves.to(self.mel_filters.device, torch.float32), self.cfg, self.mel_filters)
        if pad_frames is not None and pad_frames > feats.shape[1]:
            feats = F.pad(feats, (0, 0, 0, pad_frames - feats.shape[1]))
        n = waves.shape[-1]
        hidden = self.encoder(feats.to(self.dtype), n // self.cfg.hop_length)
        return self.projection(hidden[:, :self.cfg.num_clip_tokens(n)])

    @torch.inference_mode()
    def encode_clips(self, clips: list[torch.Tensor], longest: int) -> list[torch.Tensor]:
        """Embeddings of each clip, encoded as transformers encodes a batch of clips padded to
        `longest` samples. Equal-length clips share a forward; padding is applied only where it
        changes anything (a shorter clip with an extra token)."""
        out: list[torch.Tensor | None] = [None] * len(clips)
        by_size: dict[int, list[int]] = {}
        for i, c in enumerate(clips):
            by_size.setdefault(c.numel(), []).append(i)
        for size, idx in by_size.items():
            hop = self.cfg.hop_length
            extra = self.cfg.num_clip_tokens(size) > _subsampled_length(size // hop, self.cfg)
            pad = 1 + longest // hop if extra and size < longest else None
            for s in range(0, len(idx), self.batch_clips):
                part = idx[s:s + self.batch_clips]
                emb = self(torch.stack([clips[i] for i in part]), pad)
                for i, e in zip(part, emb):
                    out[i] = e
        return out

    def encode_chunks(self, wave, t_offset: float = 0.0) -> list[AudioChunk]:
        """A whole waveform as its clips, each with its media time span (seconds from `t_offset`)."""
        wave = check_waveform(wave)
        n = wave.numel()
        sizes = self.cfg.clip_sizes(n)
        if sum(sizes) > n:                          # a short tail: zero-padded to the minimum clip
            wave = F.pad(wave, (0, sum(sizes) - n))
        embs = self.encode_clips(list(wave.split(sizes)), max(sizes))
        sr, chunks, start = self.cfg.sampling_rate, [], 0
        for size, e in zip(sizes, embs):
            chunks.append(AudioChunk(t_offset + start / sr, t_offset + min(start + size, n) / sr, e))
            start += size
        return chunks

    def encode(self, wave) -> torch.Tensor:
        """[n] float32 16 kHz mono samples -> [num_audio_tokens(n), llm_hidden], clips in time order."""
        return torch.cat([c.embeddings for c in self.encode_chunks(wave)])


def load_audio_tower(raw_config: dict, tensors, dtype: torch.dtype = torch.float32, device: str = "cpu",
                     *, where: str = "checkpoint") -> AudioTower:
    """The audio tower of an Omni checkpoint (tensors from engine.loader.open_checkpoint)."""
    cfg = AudioConfig.from_dict(raw_config, source=where)
    with torch.device("meta"):
        tower = AudioTower(cfg)
    # Released checkpoints also carry the NeMo featurizer's buffers (window, filters): we compute
    # ours. BatchNorm's training-time batch counter is not needed for inference.
    load_weights(tower.encoder, tensors, ENCODER_PREFIX, dtype, device, where=where,
                 skip=lambda name: name.startswith("feature_extractor.") or name.endswith(".num_batches_tracked"))
    load_weights(tower.projection, tensors, PROJECTION_PREFIX, dtype, device, where=where)
    tower.mel_filters = slaney_mel_filters(cfg.sampling_rate, cfg.n_fft, cfg.num_mel_bins).to(device)
    return tower.eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------
# streaming
# ---------------------------------------------------------------------------------------------

class AudioStream:
    """A live waveform encoded clip by clip.

    `push(samples)` returns an AudioChunk for every clip it completes; `flush()` encodes what is
    left (the end of the stream or of a segment). Only the current, incomplete clip is held: a
    preallocated buffer of one clip, whatever the stream's duration. Times count from the first
    sample pushed. With `clip_seconds` equal to the model's 30 s, the chunks equal
    `AudioTower.encode_chunks` of the whole waveform; shorter clips answer sooner, but each clip
    is encoded without the audio around it, so embeddings near a boundary differ and every clip
    of a multiple of 80 ms adds its extra (masked) token."""

    def __init__(self, tower: AudioTower, clip_seconds: float | None = None):
        self.tower, cfg = tower, tower.cfg
        clip_seconds = cfg.clip_seconds if clip_seconds is None else clip_seconds
        self.clip_samples = round(clip_seconds * cfg.sampling_rate)
        if not cfg.min_clip_samples <= self.clip_samples <= cfg.clip_samples:
            raise AudioInputError(f"AudioStream: clip_seconds = {clip_seconds}: must be between "
                                  f"{cfg.min_clip_seconds} and the model's {cfg.clip_seconds} s")
        self._buf = torch.zeros(self.clip_samples)
        self._fill = 0
        self._start = 0             # sample index (since the first push) of the buffer's start
        self._full_clips = 0        # full clips emitted since the last flush

    @property
    def buffered_samples(self) -> int:
        return self._fill

    @property
    def buffer_capacity(self) -> int:
        return self._buf.numel()

    def push(self, samples) -> list[AudioChunk]:
        samples = check_waveform(samples, "AudioStream.push").to(self._buf.device)
        full: list[torch.Tensor] = []
        pos, n = 0, samples.numel()
        while pos < n:
            if self._fill == 0 and n - pos >= self.clip_samples:      # a whole clip: no copy
                full.append(samples[pos:pos + self.clip_samples])
                pos += self.clip_samples
                continue
            take = min(self.clip_samples - self._fill, n - pos)
            self._buf[self._fill:self._fill + take] = samples[pos:pos + take]
            self._fill += take
            pos += take
            if self._fill == self.clip_samples:
                full.append(self._buf.clone())
                self._fill = 0
        if not full:
            return []
        embs = self.tower.encode_clips(full, self.clip_samples)
        sr, chunks = self.tower.cfg.sampling_rate, []
        for e in embs:
            chunks.append(AudioChunk(self._start / sr, (self._start + self.clip_samples) / sr, e))
            self._start += self.clip_samples
        self._full_clips += len(full)
        return chunks

    def flush(self) -> list[AudioChunk]:
        """Encode the incomplete clip, if any (a short one zero-padded to the minimum clip)."""
        if self._fill == 0:
            self._full_clips = 0
            return []
        cfg, n = self.tower.cfg, self._fill
        clip = F.pad(self._buf[:n], (0, max(0, cfg.min_clip_samples - n)))
        longest = self.clip_samples if self._full_clips else clip.numel()
        (emb,) = self.tower.encode_clips([clip], max(longest, clip.numel()))
        chunk = AudioChunk(self._start / cfg.sampling_rate, (self._start + n) / cfg.sampling_rate, emb)
        self._start += n
        self._fill = self._full_clips = 0
        return [chunk]
