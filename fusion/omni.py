"""The whole Nemotron Omni model: decoder, vision and audio towers, tokenizer, prompt building.

`OmniModel.load(dir)` reads a released or `save_pretrained` Omni checkpoint (or a text-only one:
then it has no towers) and turns media into `MediaEmbedding`s; `prepare` builds the decoder
input of a prompt whose placeholders name those media. Everything model-specific lives in the
towers (encoders/) and the decoder (engine/); this file only wires them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from engine.config import read_config_json
from engine.loader import checkpoint_dtype, load_decoder, open_checkpoint
from engine.tokenizer import Tokenizer
from kernels.evs import evs_retention_mask

from .stream import EmbeddingChunk, Narration, Narrator, chunk_input
from .prompt import IMAGE_TOKEN, AUDIO_TOKEN, MediaEmbedding, OmniInput, build_input, video_frame_labels


@dataclass
class OmniSettings:
    """The Omni-level fields of config.json (new or legacy names)."""

    image_token_id: int = 18
    audio_token_id: int = 27
    video_pruning_rate: float = 0.0
    temporal_patch: int = 2
    narration: Narration | None = None      # the model captions each chunk of its stream (fusion.stream)

    @classmethod
    def from_dict(cls, raw: dict, source: str = "config.json") -> "OmniSettings":
        def pick(*names, default):
            for n in names:
                if raw.get(n) is not None:
                    return raw[n]
            return default
        s = cls(image_token_id=int(pick("image_token_id", "img_context_token_id", default=18)),
                audio_token_id=int(pick("audio_token_id", "sound_context_token_id", default=27)),
                video_pruning_rate=float(pick("video_pruning_rate", default=0.0)),
                temporal_patch=int(pick("video_temporal_patch_size", default=2)),
                narration=Narration.from_dict(raw.get("stream_narration"), source))
        if not 0.0 <= s.video_pruning_rate < 1.0:
            raise ValueError(f"{source}: video_pruning_rate must be in [0, 1), got {s.video_pruning_rate}")
        if s.temporal_patch < 1:
            raise ValueError(f"{source}: video_temporal_patch_size must be >= 1, got {s.temporal_patch}")
        return s


class OmniModel:
    """Decoder + towers + tokenizer of one checkpoint folder."""

    def __init__(self, decoder, tokenizer: Tokenizer, settings: OmniSettings, vision=None, audio=None):
        self.decoder, self.tokenizer, self.settings = decoder, tokenizer, settings
        self.vision, self.audio = vision, audio
        self.narrator = Narrator(decoder, tokenizer, settings.narration) if settings.narration is not None else None

    @classmethod
    def load(cls, model_dir: str | Path, dtype: torch.dtype | None = None, device: str = "cpu",
             mtp: bool = False, tokenizer: Tokenizer | None = None) -> "OmniModel":
        model_dir = Path(model_dir)
        raw, cfg_path = read_config_json(model_dir)
        decoder = load_decoder(model_dir, dtype=dtype, device=device, mtp=mtp)
        tokenizer = tokenizer or Tokenizer.from_dir(model_dir)
        settings = OmniSettings.from_dict(raw, str(cfg_path))
        vision = audio = None
        if "vision_config" in raw or "vit_hidden_size" in raw:
            from encoders.audio import load_audio_tower
            from encoders.vision import load_vision_tower, read_processor_config
            tensors = open_checkpoint(model_dir)
            tower_dtype = dtype or checkpoint_dtype(raw) or torch.float32
            vision = load_vision_tower(raw, tensors, tower_dtype, device, read_processor_config(model_dir),
                                       where=str(model_dir))
            if raw.get("audio_config") or raw.get("sound_config"):
                audio = load_audio_tower(raw, tensors, tower_dtype, device, where=str(model_dir))
        return cls(decoder, tokenizer, settings, vision, audio)

    # media -> embeddings -------------------------------------------------------------------------
    def _need(self, tower, what: str):
        if tower is None:
            raise ValueError(f"this checkpoint has no {what} tower: it takes text only")
        return tower

    @torch.inference_mode()
    def embed_image(self, image: torch.Tensor) -> MediaEmbedding:
        """uint8 (H, W, 3) -> the image's prompt embeddings."""
        return MediaEmbedding("image", self._need(self.vision, "vision").encode_image(image))

    @torch.inference_mode()
    def embed_video(self, frames: torch.Tensor, frame_indices: list[int], source_fps: float | None,
                    evs_rate: float | None = None) -> MediaEmbedding:
        """uint8 (T, H, W, 3) sampled frames (their indices in the source video and its frame rate
        make the labels) -> the video's prompt embeddings, EVS applied at `evs_rate` (default: the
        checkpoint's `video_pruning_rate`)."""
        tubelets = self._need(self.vision, "vision").encode_video(frames)
        rate = self.settings.video_pruning_rate if evs_rate is None else evs_rate
        keep = evs_retention_mask(tubelets, rate) if rate > 0 else None
        labels = video_frame_labels(frame_indices, source_fps, self.settings.temporal_patch)
        return MediaEmbedding("video", tubelets, labels=labels, keep=keep)

    @torch.inference_mode()
    def embed_audio(self, samples: torch.Tensor) -> MediaEmbedding:
        """float32 16 kHz mono samples -> the recording's prompt embeddings, one run per clip."""
        tower = self._need(self.audio, "audio")
        clips = [tower.cfg.num_clip_tokens(n) for n in tower.cfg.clip_sizes(len(samples))]
        return MediaEmbedding("audio", tower.encode(samples), clip_tokens=clips)

    # prompt -> decoder input ---------------------------------------------------------------------
    def prepare(self, text: str, media: list[MediaEmbedding]) -> OmniInput:
        return build_input(self.tokenizer, text, media, image_token_id=self.settings.image_token_id,
                           audio_token_id=self.settings.audio_token_id)

    @torch.inference_mode()
    def input_embeds(self, inp: OmniInput) -> torch.Tensor:
        return inp.embeds(self.decoder.embed)

    @torch.inference_mode()
    def read_chunks(self, session, chunks: list[EmbeddingChunk]) -> list[tuple[list[int], str]]:
        """Prefill stream chunks into `session` in order (each its label, its embeddings between
        their markers), each followed, for a narrating model, by the model's caption of it (those
        that read their chunk alone written together beforehand, Narrator.captions). Returns, per
        chunk, the ids appended (media positions hold placeholders) and the caption ("" if none)."""
        xs = [chunk_input(c, self.tokenizer, self.decoder.embed,
                          self.settings.audio_token_id if c.modality == "audio" else self.settings.image_token_id)
              for c in chunks]
        written = self.narrator.captions(chunks, xs) if self.narrator is not None else None
        out = []
        for k, (chunk, x) in enumerate(zip(chunks, xs)):
            session.check_room(x.shape[0])
            session.prefill(embeds=x)
            ids = self.tokenizer.encode(chunk.text())
            caption = "" if self.narrator is None else self.narrator(session, chunk, x, None if written is None else written[k])
            out.append((ids + (self.tokenizer.encode(caption) if caption else []), caption))
        return out

    def read_chunk(self, session, chunk: EmbeddingChunk) -> tuple[list[int], str]:
        """`read_chunks` of one chunk."""
        return self.read_chunks(session, [chunk])[0]


__all__ = ["OmniModel", "OmniSettings", "IMAGE_TOKEN", "AUDIO_TOKEN"]
