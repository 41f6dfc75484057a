"""Tiny random Nemotron Omni towers written by transformers (the oracle), for encoder parity tests.

`build_audio_checkpoint` saves a `NemotronH_Omni_Reasoning_V3` whose audio tower has the given
Parakeet sizes (the decoder and vision tower are as small as transformers allows: they are
only there so `save_pretrained` writes a real Omni checkpoint, with its released weight names
and its `audio_config`). Weights get O(1) activations, BatchNorm running statistics included,
so a wrong normalization shows. `hf_audio_embeddings` runs transformers' own processor and
`get_audio_features` on a list of clips, as one batch.
"""

from __future__ import annotations

from pathlib import Path

import torch

from omni_builders import randomize_

AUDIO_TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                  conv_kernel_size=9, subsampling_factor=8, subsampling_conv_channels=16, num_mel_bins=128,
                  projection_hidden_size=96, projection_bias=False)
LLM_HIDDEN = 48


def audio_omni_config(**audio_overrides):
    from transformers import NemotronH_Omni_Reasoning_V3_Config
    text = dict(vocab_size=320, hidden_size=LLM_HIDDEN, hybrid_override_pattern="M-", mamba_num_heads=4,
                mamba_head_dim=8, ssm_state_size=8, n_groups=1, conv_kernel=4, chunk_size=16, intermediate_size=32,
                num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    vision = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, patch_size=16, max_img_size=64,
                  num_cls_tokens=1, num_registers=0, video_temporal_patch_size=2)
    return NemotronH_Omni_Reasoning_V3_Config(
        text_config=text, vision_config=vision, audio_config={**AUDIO_TINY, **audio_overrides},
        projector_hidden_size=32, vision_hidden_size=32, image_token_id=18, video_token_id=21, audio_token_id=27)


def build_audio_checkpoint(path: Path, seed: int = 0, dtype=torch.float32, **audio_overrides):
    """Save a tiny random Omni model to `path` (config.json + model.safetensors); returns it."""
    from transformers import NemotronH_Omni_Reasoning_V3
    torch.manual_seed(seed)
    model = NemotronH_Omni_Reasoning_V3(audio_omni_config(**audio_overrides)).eval()
    randomize_(model, seed)
    model = model.to(dtype)
    model.save_pretrained(path)
    return model


def feature_extractor():
    from transformers import ParakeetFeatureExtractor
    return ParakeetFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160, n_fft=512,
                                    win_length=400, preemphasis=0.97)


@torch.no_grad()
def hf_audio_embeddings(model, clips: list) -> torch.Tensor:
    """transformers' embeddings of `clips` (numpy fp32 waveforms) encoded as one padded batch:
    its feature extractor, `get_audio_features`, the per-clip token counts it keeps."""
    feats = feature_extractor()(clips, sampling_rate=16000, return_tensors="pt")
    out = model.get_audio_features(feats["input_features"].to(model.dtype), feats["attention_mask"])
    return out.pooler_output
