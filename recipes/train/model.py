"""The default model's parts (our own modules), their seeded initialization, and the checkpoint writer.

The decoder, the whole vision tower (ViT and `mlp1`) and the sound projector are trained; the
conformer stays at its seeded random initialization (frozen), a random projection of the log-mel
frames that the trained `sound_projection` learns to read. (A frozen random ViT carried colour but
little shape: a linear probe on its features named the shape or word of 31% of the tubelets.)
`save_omni` writes the released Hugging Face layout:
`language_model.*`, `vision_model.radio_model.*`, `mlp1.*`, `sound_encoder.encoder.*`,
`sound_projection.*`, plus the always-constant tensors transformers expects (RADIO layer scales
of 1, its summary indices, BatchNorm batch counters).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from encoders.audio import AudioConfig, AudioTower
from encoders.vision import VisionConfig, VisionTower
from engine.checkpoint import init_random
from engine.config import DecoderConfig
from engine.model import NemotronH

from .config import GENERATION_CONFIG, omni_config, processor_config


def build_parts(raw: dict) -> tuple[NemotronH, VisionTower, AudioTower]:
    """Decoder, vision tower and audio tower of a config (uninitialized)."""
    decoder = NemotronH(DecoderConfig.from_dict(raw, source="default-model config"))
    vision = VisionTower(VisionConfig.from_dict(raw, processor_config(), source="default-model config"))
    audio = AudioTower(AudioConfig.from_dict(raw, source="default-model config"))
    return decoder, vision, audio


@torch.no_grad()
def _normal(p: torch.Tensor, std: float, g: torch.Generator) -> None:
    p.copy_(torch.randn(p.shape, generator=g) * std)


@torch.no_grad()
def init_vision(tower: VisionTower, seed: int) -> None:
    """Patch embedders with unit-scale outputs, everything else small (std 0.02), as ViTs start:
    the residual stream stays close to the random projection of the pixels."""
    g = torch.Generator().manual_seed(seed)
    for name, p in tower.named_parameters():
        if name.endswith(("embedder.weight",)):
            _normal(p, 1 / math.sqrt(p.shape[1]), g)
        elif name.endswith("bias"):
            p.zero_()
        elif "norm" in name.split(".")[-2] or name.startswith("mlp1.0"):
            p.fill_(1.0)
        else:
            _normal(p, 0.02, g)


@torch.no_grad()
def init_audio(tower: AudioTower, seed: int) -> None:
    """Subsampling convs and their linear keep the scale of their input (He / LeCun), conformer
    blocks start small (std 0.02), norms at 1, BatchNorm statistics the identity."""
    g = torch.Generator().manual_seed(seed)
    for name, p in tower.named_parameters():
        leaf = name.split(".")[-1]
        parent = name.split(".")[-2]
        if "subsampling" in name and leaf == "weight":
            fan_in = math.prod(p.shape[1:])
            _normal(p, math.sqrt(2 / fan_in) if p.dim() == 4 else 1 / math.sqrt(fan_in), g)
        elif leaf in ("bias", "bias_u", "bias_v"):
            p.zero_()
        elif parent.startswith("norm") or leaf == "weight" and p.dim() == 1:
            p.fill_(1.0)
        else:
            _normal(p, 0.02, g)


def new_model(seed: int, vocab_size: int):
    """(raw config, decoder, vision, audio) with seeded weights: the run's starting point."""
    raw = omni_config(vocab_size)
    decoder, vision, audio = build_parts(raw)
    init_random(decoder, seed)
    init_vision(vision, seed + 1)
    init_audio(audio, seed + 2)
    audio.requires_grad_(False).eval()
    audio.projection.requires_grad_(True)
    return raw, decoder, vision, audio


def checkpoint_tensors(decoder: NemotronH, vision: VisionTower, audio: AudioTower) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint under its released name."""
    out = {f"language_model.{k}": v for k, v in decoder.state_dict().items()}
    out.update(vision.state_dict())                    # vision_model.radio_model.model.*, mlp1.*
    for i, block in enumerate(vision.vit.blocks):      # RADIO's layer scales: ones, which ours omit
        width = block.norm1.weight.shape[0]
        for j in (1, 2):
            out[f"vision_model.radio_model.model.blocks.{i}.layer_scale{j}.lambda1"] = torch.ones(width)
    out["vision_model.radio_model.summary_idxs"] = torch.arange(vision.cfg.num_cls_tokens)
    out.update({f"sound_encoder.encoder.{k}": v for k, v in audio.encoder.state_dict().items()})
    for k in list(out):
        if k.startswith("sound_encoder.") and k.endswith("norm.running_var"):
            out[k[: -len("running_var")] + "num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    out.update({f"sound_projection.{k}": v for k, v in audio.projection.state_dict().items()})
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


def save_omni(out_dir, raw: dict, decoder: NemotronH, vision: VisionTower, audio: AudioTower) -> None:
    """config.json, model.safetensors, processor_config.json, generation_config.json into `out_dir`
    (the tokenizer files are written by the tokenizer trainer)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(checkpoint_tensors(decoder, vision, audio), str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
    (out / "processor_config.json").write_text(json.dumps(processor_config(), indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2) + "\n")


def trainable_parameters(decoder: NemotronH, vision: VisionTower, audio: AudioTower) -> list[nn.Parameter]:
    return [p for m in (decoder, vision, audio.projection) for p in m.parameters() if p.requires_grad]
