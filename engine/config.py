"""The NemotronH decoder configuration, read from a checkpoint's `config.json`.

One dataclass, `DecoderConfig`, holds every field the decoder needs. `DecoderConfig.from_dict`
accepts the three shapes real checkpoints come in:

* a text checkpoint (`NemotronHForCausalLM`): the fields at the top level;
* an Omni / VL checkpoint: the decoder under `text_config` (what `save_pretrained` writes) or
  the legacy `llm_config` (what the released checkpoints carry);
* either layer description: `hybrid_override_pattern` ("MEM*E-...") or `layers_block_type`
  (["mamba", "moe", "attention", "mlp", ...], including the `linear_attention` /
  `full_attention` spellings).

Everything is validated here, before any weight is allocated: an unknown layer kind or a field
out of range raises `ConfigError` naming the field, its value and the file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

# Pattern characters, as in `hybrid_override_pattern`.
MAMBA, ATTENTION, MLP, MOE = "M", "*", "-", "E"
_BLOCK_TYPE_TO_CHAR = {
    "mamba": MAMBA, "linear_attention": MAMBA, "m": MAMBA,
    "attention": ATTENTION, "full_attention": ATTENTION, "*": ATTENTION,
    "mlp": MLP, "-": MLP,
    "moe": MOE, "e": MOE,
}


class ConfigError(ValueError):
    """A config.json that the decoder cannot run: says which field, which value and where."""


def read_config_json(path: str | Path) -> tuple[dict, Path]:
    """The parsed config.json of a checkpoint folder (or the file itself), and its path."""
    path = Path(path)
    if path.is_dir() or not path.suffix:
        path = path / "config.json"
    try:
        raw = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError):
        raise ConfigError(f"{path.parent}: no config.json; point --model at a checkpoint folder") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: not a JSON object")
    return raw, path


def _time_step_limit(v, where: str) -> tuple[float, float]:
    try:
        lo, hi = v
        return _float(lo), _float(hi)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: `time_step_limit` = {v!r}: expected [min, max]") from None


def _float(v):
    # save_pretrained writes infinity as {"__float__": "Infinity"}.
    if isinstance(v, dict) and "__float__" in v:
        return float(v["__float__"])
    return float(v)


def _pattern_from_list(types, where: str) -> str:
    chars = []
    for i, t in enumerate(types):
        c = _BLOCK_TYPE_TO_CHAR.get(str(t).lower())
        if c is None:
            raise ConfigError(
                f"{where}: layer {i} has unknown block type {t!r}; expected one of "
                "mamba/linear_attention, attention/full_attention, mlp, moe")
        chars.append(c)
    return "".join(chars)


def _check_pattern(pattern: str, where: str) -> str:
    for i, c in enumerate(pattern):
        if c not in (MAMBA, ATTENTION, MLP, MOE):
            raise ConfigError(
                f"{where}: layer {i} has unknown kind {c!r} in pattern {pattern!r}; "
                "expected 'M' (Mamba2), '*' (attention), '-' (MLP) or 'E' (MoE)")
    return pattern


@dataclass(frozen=True)
class DecoderConfig:
    vocab_size: int
    hidden_size: int
    pattern: str                        # one char per layer: M * - E
    layer_norm_epsilon: float = 1e-5
    # attention
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    head_dim: int = 128
    attention_bias: bool = False
    max_position_embeddings: int = 4096
    # dense MLP ('-')
    intermediate_size: int = 21504
    mlp_bias: bool = False
    # Mamba2 ('M')
    mamba_num_heads: int = 128
    mamba_head_dim: int = 64
    ssm_state_size: int = 128
    n_groups: int = 8
    conv_kernel: int = 4
    chunk_size: int = 128
    use_conv_bias: bool = True
    mamba_proj_bias: bool = False
    time_step_limit: tuple[float, float] = (0.0, math.inf)
    # MoE ('E')
    n_routed_experts: int = 8
    num_experts_per_tok: int = 2
    moe_intermediate_size: int = 7688
    moe_shared_expert_intermediate_size: int = 7688
    n_shared_experts: int = 1
    moe_latent_size: int | None = None
    routed_scaling_factor: float = 1.0
    n_group: int = 1
    topk_group: int = 1
    norm_topk_prob: bool = True
    # multi-token prediction
    num_nextn_predict_layers: int = 0
    mtp_pattern: str = "*E"
    # tokens
    bos_token_id: int | None = 1
    eos_token_ids: tuple[int, ...] = (2,)
    pad_token_id: int | None = 0
    tie_word_embeddings: bool = False
    source: str = field(default="<dict>", compare=False)

    # ---- derived sizes -------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.pattern)

    @property
    def mamba_d_inner(self) -> int:
        return self.mamba_num_heads * self.mamba_head_dim

    @property
    def mamba_conv_dim(self) -> int:
        return self.mamba_d_inner + 2 * self.n_groups * self.ssm_state_size

    @property
    def mtp_layer_pattern(self) -> str:
        """The flat pattern of `mtp.layers.*`: the MTP pattern repeated once per predict step."""
        return self.mtp_pattern * self.num_nextn_predict_layers

    # ---- parsing -------------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | Path) -> "DecoderConfig":
        raw, path = read_config_json(path)
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict, source: str = "<dict>") -> "DecoderConfig":
        where = source
        d = raw
        for key in ("text_config", "llm_config"):       # Omni / VL checkpoints
            if isinstance(raw.get(key), dict):
                d, where = raw[key], f"{source}:{key}"
                break

        def get(name, default=None, *aliases, kind=None):
            for n in (name, *aliases):
                if n in d and d[n] is not None:
                    value = d[n]
                    break
            else:
                return default
            if kind is None:
                return value
            ok = isinstance(value, bool) if kind is bool else (
                isinstance(value, (int, float)) and not isinstance(value, bool)
                and (kind is float or float(value).is_integer()))
            if not ok:
                raise ConfigError(f"{where}: `{n}` = {value!r}: expected {kind.__name__}")
            return kind(value)

        if "layers_block_type" in d and d["layers_block_type"] is not None:
            pattern = _pattern_from_list(d["layers_block_type"], where)
        elif "hybrid_override_pattern" in d:
            pattern = _check_pattern(str(d["hybrid_override_pattern"]), where)
        else:
            raise ConfigError(f"{where}: needs `hybrid_override_pattern` or `layers_block_type`")
        if not pattern:
            raise ConfigError(f"{where}: the layer pattern is empty")

        mtp = get("mtp_layers_block_type")
        mtp_pattern = (_pattern_from_list(mtp, where + ":mtp_layers_block_type") if isinstance(mtp, list)
                       else _check_pattern(str(get("mtp_hybrid_override_pattern", "*E")), where))

        for name, want in (("mlp_hidden_act", "relu2"), ("mamba_hidden_act", "silu")):
            got = get(name, want)
            if got != want:
                raise ConfigError(f"{where}: `{name}` is {got!r}; NemotronH uses {want!r}")

        eos = get("eos_token_id", 2)
        eos = tuple(eos) if isinstance(eos, (list, tuple)) else (eos,)
        limit = get("time_step_limit", (0.0, math.inf), "mamba_dt_limit")

        cfg = cls(
            vocab_size=get("vocab_size", 131072, kind=int),
            hidden_size=get("hidden_size", 4096, kind=int),
            pattern=pattern,
            layer_norm_epsilon=get("layer_norm_epsilon", 1e-5, "rms_norm_eps", kind=float),
            num_attention_heads=get("num_attention_heads", 32, kind=int),
            num_key_value_heads=get("num_key_value_heads", get("num_attention_heads", 32, kind=int), kind=int),
            head_dim=get("head_dim", None, "attention_head_dim", kind=int) or (
                get("hidden_size", 4096, kind=int) // max(1, get("num_attention_heads", 32, kind=int))),
            attention_bias=get("attention_bias", False, kind=bool),
            max_position_embeddings=get("max_position_embeddings", 4096, kind=int),
            intermediate_size=get("intermediate_size", 21504, kind=int),
            mlp_bias=get("mlp_bias", False, kind=bool),
            mamba_num_heads=get("mamba_num_heads", 128, kind=int),
            mamba_head_dim=get("mamba_head_dim", 64, kind=int),
            ssm_state_size=get("ssm_state_size", 128, kind=int),
            n_groups=get("n_groups", 8, "mamba_n_groups", kind=int),
            conv_kernel=get("conv_kernel", 4, "mamba_d_conv", kind=int),
            chunk_size=get("chunk_size", 128, "mamba_chunk_size", kind=int),
            use_conv_bias=get("use_conv_bias", True, "mamba_conv_bias", kind=bool),
            mamba_proj_bias=get("use_bias", False, "mamba_proj_bias", kind=bool),
            time_step_limit=_time_step_limit(limit, where),
            n_routed_experts=get("n_routed_experts", 8, "num_local_experts", kind=int),
            num_experts_per_tok=get("num_experts_per_tok", 2, kind=int),
            moe_intermediate_size=get("moe_intermediate_size", 7688, kind=int),
            moe_shared_expert_intermediate_size=get("moe_shared_expert_intermediate_size", 7688, kind=int),
            n_shared_experts=get("n_shared_experts", 1, kind=int),
            moe_latent_size=get("moe_latent_size", None, kind=int) or None,
            routed_scaling_factor=get("routed_scaling_factor", 1.0, kind=float),
            n_group=get("n_group", 1, kind=int),
            topk_group=get("topk_group", 1, kind=int),
            norm_topk_prob=get("norm_topk_prob", True, kind=bool),
            num_nextn_predict_layers=get("num_nextn_predict_layers", 0, kind=int),
            mtp_pattern=mtp_pattern,
            bos_token_id=get("bos_token_id", 1),
            eos_token_ids=tuple(e for e in eos if isinstance(e, int)),
            pad_token_id=get("pad_token_id", 0),
            tie_word_embeddings=get("tie_word_embeddings", False, kind=bool),
            source=where,
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise ConfigError for any field the decoder cannot run with."""
        w = self.source

        def need(ok: bool, field_name: str, value, why: str):
            if not ok:
                raise ConfigError(f"{w}: `{field_name}` = {value!r}: {why}")

        _check_pattern(self.pattern, w)
        _check_pattern(self.mtp_pattern, w)
        for name in ("vocab_size", "hidden_size"):
            need(getattr(self, name) > 0, name, getattr(self, name), "must be positive")
        need(self.layer_norm_epsilon > 0, "layer_norm_epsilon", self.layer_norm_epsilon, "must be positive")
        if ATTENTION in self.pattern + (self.mtp_layer_pattern or ""):
            need(self.num_attention_heads > 0, "num_attention_heads", self.num_attention_heads, "must be positive")
            need(self.head_dim > 0, "head_dim", self.head_dim, "must be positive")
            need(0 < self.num_key_value_heads <= self.num_attention_heads
                 and self.num_attention_heads % self.num_key_value_heads == 0,
                 "num_key_value_heads", self.num_key_value_heads,
                 f"must divide num_attention_heads ({self.num_attention_heads})")
        if MAMBA in self.pattern + self.mtp_layer_pattern:
            for name in ("mamba_num_heads", "mamba_head_dim", "ssm_state_size", "n_groups", "chunk_size"):
                need(getattr(self, name) > 0, name, getattr(self, name), "must be positive")
            need(self.conv_kernel >= 1, "conv_kernel", self.conv_kernel, "must be at least 1")
            need(self.mamba_num_heads % self.n_groups == 0, "n_groups", self.n_groups,
                 f"must divide mamba_num_heads ({self.mamba_num_heads})")
            lo, hi = self.time_step_limit
            need(0 <= lo <= hi, "time_step_limit", self.time_step_limit, "must be (min, max) with 0 <= min <= max")
        if MLP in self.pattern + self.mtp_layer_pattern:
            need(self.intermediate_size > 0, "intermediate_size", self.intermediate_size, "must be positive")
        if MOE in self.pattern + self.mtp_layer_pattern:
            need(self.n_routed_experts > 0, "n_routed_experts", self.n_routed_experts, "must be positive")
            need(0 < self.num_experts_per_tok <= self.n_routed_experts, "num_experts_per_tok",
                 self.num_experts_per_tok, f"must be in 1..n_routed_experts ({self.n_routed_experts})")
            need(self.moe_intermediate_size > 0, "moe_intermediate_size", self.moe_intermediate_size,
                 "must be positive")
            need(self.n_group >= 1 and self.n_routed_experts % self.n_group == 0, "n_group", self.n_group,
                 f"must divide n_routed_experts ({self.n_routed_experts})")
            need(1 <= self.topk_group <= self.n_group, "topk_group", self.topk_group,
                 f"must be in 1..n_group ({self.n_group})")
            per_group = self.n_routed_experts // self.n_group
            need(self.n_group == 1 or per_group >= 2, "n_group", self.n_group,
                 "grouped routing scores each group by its top-2 experts: need at least 2 experts a group")
            need(self.num_experts_per_tok <= self.topk_group * per_group, "num_experts_per_tok",
                 self.num_experts_per_tok, f"exceeds the experts in topk_group groups ({self.topk_group * per_group})")
            need(self.moe_latent_size is None or self.moe_latent_size > 0, "moe_latent_size",
                 self.moe_latent_size, "must be positive or null")
        need(self.num_nextn_predict_layers >= 0, "num_nextn_predict_layers", self.num_nextn_predict_layers,
             "must be >= 0")
        for e in self.eos_token_ids:
            need(0 <= e < self.vocab_size, "eos_token_id", e, f"must be a token id below vocab_size ({self.vocab_size})")
