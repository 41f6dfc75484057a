"""Tiny random Nemotron Omni checkpoints written by transformers (the oracle), for parity tests.

`build_omni_checkpoint` makes a `NemotronH_Omni_Reasoning_V3` (NemotronH decoder, RADIO vision
tower, Parakeet audio tower, both projectors) from a small config, gives it weights with O(1)
activations (transformers' own init is std 0.02: logits would be flat and greedy ties
arbitrary), saves it with `save_pretrained`, and writes the tokenizer and the processor files
next to it. It returns the transformers model and processor, ready to compute expectations.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from hf_oracle import import_torchvision
from tokenizer_fixture import build_test_tokenizer

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def omni_config(pattern: str = "M*EM-E*M", **text_overrides):
    from transformers import NemotronH_Omni_Reasoning_V3_Config
    text = dict(
        vocab_size=320, hidden_size=64, hybrid_override_pattern=pattern, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, intermediate_size=96, mamba_num_heads=4, mamba_head_dim=16,
        ssm_state_size=16, n_groups=2, conv_kernel=4, chunk_size=16, n_routed_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=32, moe_shared_expert_intermediate_size=48, routed_scaling_factor=2.5,
        norm_topk_prob=True, layer_norm_epsilon=1e-5, tie_word_embeddings=False, max_position_embeddings=8192,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, **text_overrides)
    vision = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=4.0, patch_size=16,
                  max_img_size=256, num_cls_tokens=2, num_registers=2, video_temporal_patch_size=2, qkv_bias=True,
                  layer_norm_eps=1e-6)
    audio = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                 conv_kernel_size=9, subsampling_factor=8, subsampling_conv_channels=16, num_mel_bins=128,
                 attention_bias=False, scale_input=False, projection_hidden_size=96, projection_bias=False)
    return NemotronH_Omni_Reasoning_V3_Config(
        text_config=text, vision_config=vision, audio_config=audio, downsample_ratio=0.5, projector_hidden_size=128,
        vision_hidden_size=64, video_pruning_rate=0.0, video_temporal_patch_size=2, image_token_id=18,
        video_token_id=21, audio_token_id=27)


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Weights ~ N(0, 1/fan_in), norms ~ 1 + 0.1 N, biases ~ 0.1 N; Mamba dt above time_step_min."""
    g = torch.Generator().manual_seed(seed)
    normal = lambda shape, std=1.0, mean=0.0: torch.randn(shape, generator=g) * std + mean
    uniform = lambda shape, lo, hi: torch.rand(shape, generator=g) * (hi - lo) + lo
    for name, p in list(model.named_parameters()) + list(model.named_buffers()):
        leaf = name.split(".")[-1]
        if not p.is_floating_point() or "layer_scale" in name or leaf == "inv_freq":
            continue
        if leaf == "A_log":
            p.copy_(torch.log(uniform(p.shape, 1.0, 8.0)))
        elif leaf == "D":
            p.copy_(uniform(p.shape, 0.5, 1.5))
        elif leaf == "dt_bias":
            dt = uniform(p.shape, 0.05, 0.2)
            p.copy_(dt + torch.log(-torch.expm1(-dt)))           # inverse softplus
        elif leaf == "e_score_correction_bias":
            p.copy_(normal(p.shape, 0.05))
        elif leaf == "running_var":
            p.copy_(uniform(p.shape, 0.5, 1.5))
        elif leaf in ("running_mean", "bias", "bias_u", "bias_v"):
            p.copy_(normal(p.shape, 0.1))
        elif p.ndim == 1:
            p.copy_(normal(p.shape, 0.1, 1.0))
        elif "language_model" in name and "embeddings" in name:
            p.copy_(normal(p.shape))
        elif "position" in name or "cls" in name or "token" in name:
            p.copy_(normal(p.shape, 0.5))
        else:
            fan_in = p.shape[-1] if (p.ndim == 3 and "experts" in name) else math.prod(p.shape[1:])
            p.copy_(normal(p.shape, (4.0 if name.endswith("lm_head.weight") else 1.0) / math.sqrt(fan_in)))


def build_processor(model_dir: Path, min_num_patches: int = 16, max_num_patches: int = 64,
                    video_target_num_patches: int = 32):
    import_torchvision()
    from transformers import (NemotronH_Omni_Reasoning_V3ImageProcessor, NemotronH_Omni_Reasoning_V3Processor,
                              NemotronH_Omni_Reasoning_V3VideoProcessor, ParakeetFeatureExtractor,
                              PreTrainedTokenizerFast)
    tok = PreTrainedTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"), bos_token="<s>",
                                  eos_token="</s>", unk_token="<unk>", pad_token="<unk>")
    return NemotronH_Omni_Reasoning_V3Processor(
        image_processor=NemotronH_Omni_Reasoning_V3ImageProcessor(
            patch_size=16, downsample_ratio=0.5, min_num_patches=min_num_patches, max_num_patches=max_num_patches,
            max_model_len=8192),
        video_processor=NemotronH_Omni_Reasoning_V3VideoProcessor(
            norm_mean=CLIP_MEAN, norm_std=CLIP_STD, patch_size=16, downsample_ratio=0.5,
            video_target_num_patches=video_target_num_patches, video_maintain_aspect_ratio=True,
            temporal_patch_size=2),
        tokenizer=tok,
        feature_extractor=ParakeetFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160, n_fft=512,
                                                   win_length=400, preemphasis=0.97),
        audio_sampling_rate=16000, audio_subsampling_factor=8, audio_hop_length=160, video_temporal_patch_dim=2)


def build_omni_checkpoint(path: Path, pattern: str = "M*EM-E*M", seed: int = 0, max_shard_size: str | None = None,
                          pruning_rate: float = 0.0, **text_overrides):
    """Save a tiny random Omni model, its tokenizer and processor to `path`; returns (model, processor)."""
    from transformers import NemotronH_Omni_Reasoning_V3
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = omni_config(pattern, **text_overrides)
    cfg.video_pruning_rate = pruning_rate
    torch.manual_seed(seed)
    model = NemotronH_Omni_Reasoning_V3(cfg).eval()
    randomize_(model, seed)
    model.save_pretrained(path, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    build_test_tokenizer(path, vocab_size=cfg.text_config.vocab_size)
    processor = build_processor(path)
    processor.save_pretrained(path)
    return model, processor
