"""Prompt building for Nemotron Omni: placeholders expanded as the reference processor expands
them, and the projected media embeddings placed at their placeholder positions.

A prompt names its media with placeholders, in order: `<image>` an image, `<video>` a video,
`<so_embedding>` an audio clip. Each expands to the tokens the model was trained on:

    image  <img><image>*n</img>
    video  Frame 1 sampled at 0.00 seconds and frame 2 sampled at 0.50 seconds: <img><image>*n</img>
           ... one labelled <img></img> run per tubelet, joined by newlines
    audio  <so_start><so_embedding>*n<so_end>, one such run per 30 s clip

Videos use the image token too. EVS-pruned video tokens are left out of the expansion (every
label and every `<img></img>` pair stays), which gives the ids the reference gets by pruning
after expansion. Embeddings replace the placeholder tokens' embeddings in prompt order, each
medium in its own runs, so a prompt may mix images, videos and audio freely.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from engine.tokenizer import build_chat_prompt

IMAGE_TOKEN, VIDEO_TOKEN, AUDIO_TOKEN = "<image>", "<video>", "<so_embedding>"
IMG_START, IMG_END, SO_START, SO_END = "<img>", "</img>", "<so_start>", "<so_end>"
PLACEHOLDERS = {"image": IMAGE_TOKEN, "video": VIDEO_TOKEN, "audio": AUDIO_TOKEN}
_PLACEHOLDER_RE = re.compile("|".join(map(re.escape, (IMAGE_TOKEN, VIDEO_TOKEN, AUDIO_TOKEN))))


class PromptError(ValueError):
    """The prompt and its media do not fit together."""


def video_frame_labels(frame_indices: list[int], source_fps: float | None, temporal_patch: int = 2) -> list[str]:
    """The text before each tubelet: `Frame 1 sampled at 0.00 seconds and frame 2 sampled at ...: `.

    Times are `index * int(1000 / fps) / 1000` as the reference writes them (frame 14 at 30 fps
    reads 0.46); a short last tubelet lists only its real frame; without a frame rate only the
    frame numbers are given.
    """
    frame_ms = int(1000.0 / source_fps) if source_fps else None
    labels = []
    for start in range(0, len(frame_indices), temporal_patch):
        parts = []
        for k, index in enumerate(frame_indices[start:start + temporal_patch]):
            word = "Frame" if k == 0 else "frame"
            if frame_ms is None:
                parts.append(f"{word} {start + k + 1}")
            else:
                parts.append(f"{word} {start + k + 1} sampled at {int(index) * frame_ms / 1000.0:.2f} seconds")
        labels.append(" and ".join(parts) + ": ")
    return labels


@dataclass
class MediaEmbedding:
    """One medium's projected embeddings, ready to be placed in a prompt.

    kind: "image" | "video" | "audio".
    embeds: image and audio (n, D); video (tubelets, tokens_per_tubelet, D).
    labels: video only, the text before each tubelet (see `video_frame_labels`).
    keep: video only, the EVS retention mask (tubelets, tokens_per_tubelet); None keeps all.
    clip_tokens: audio only, the tokens of each clip the encoder cut the audio into (each clip
        gets its own <so_start>...<so_end>, as consecutive audio inputs do); None: one run.
    """

    kind: str
    embeds: torch.Tensor
    labels: list[str] | None = None
    keep: torch.Tensor | None = None
    clip_tokens: list[int] | None = None

    def __post_init__(self):
        if self.kind not in PLACEHOLDERS:
            raise PromptError(f"unknown media kind {self.kind!r} (expected one of {sorted(PLACEHOLDERS)})")
        want = 3 if self.kind == "video" else 2
        if self.embeds.dim() != want:
            raise PromptError(f"{self.kind} embeddings must have {want} dimensions, got {tuple(self.embeds.shape)}")
        if self.kind == "video":
            if self.labels is None or len(self.labels) != self.embeds.shape[0]:
                raise PromptError(f"a video of {self.embeds.shape[0]} tubelets needs as many labels")
            if self.keep is not None and self.keep.shape != self.embeds.shape[:2]:
                raise PromptError(f"EVS mask {tuple(self.keep.shape)} does not match the video's "
                                  f"{tuple(self.embeds.shape[:2])} tokens")
        if self.clip_tokens is not None and sum(self.clip_tokens) != self.embeds.shape[0]:
            raise PromptError(f"audio clips of {self.clip_tokens} tokens do not add up to its {self.embeds.shape[0]}")

    @property
    def num_tokens(self) -> int:
        """Embedding tokens this medium puts in the prompt (after EVS)."""
        if self.kind == "video":
            return int(self.keep.sum()) if self.keep is not None else self.embeds.shape[0] * self.embeds.shape[1]
        return self.embeds.shape[0]

    def kept_embeds(self) -> torch.Tensor:
        """(num_tokens, D) in prompt order."""
        if self.kind != "video":
            return self.embeds
        flat = self.embeds.reshape(-1, self.embeds.shape[-1])
        return flat if self.keep is None else flat[self.keep.reshape(-1)]

    def expansion(self) -> str:
        """The text that replaces this medium's placeholder."""
        if self.kind == "image":
            return IMG_START + IMAGE_TOKEN * self.num_tokens + IMG_END
        if self.kind == "audio":
            return "".join(SO_START + AUDIO_TOKEN * n + SO_END for n in (self.clip_tokens or [self.num_tokens]))
        n = self.embeds.shape[1]
        counts = self.keep.sum(1).tolist() if self.keep is not None else [n] * self.embeds.shape[0]
        return "\n".join(label + IMG_START + IMAGE_TOKEN * int(c) + IMG_END for label, c in zip(self.labels, counts))


def placeholder_kinds(text: str) -> list[str]:
    """The media kinds `text`'s placeholders name, in order."""
    kind_of = {v: k for k, v in PLACEHOLDERS.items()}
    return [kind_of[p] for p in _PLACEHOLDER_RE.findall(text)]


def expand_placeholders(text: str, media: list[MediaEmbedding]) -> str:
    """Replace the i-th placeholder of `text` by the expansion of `media[i]`; kinds must match."""
    found = _PLACEHOLDER_RE.findall(text)
    if len(found) != len(media):
        have = ", ".join(f"{sum(m.kind == k for m in media)} {k}" for k in PLACEHOLDERS)
        raise PromptError(f"the prompt has {len(found)} media placeholders ({', '.join(found) or 'none'}) "
                          f"but {have} were given: write one {IMAGE_TOKEN}, {VIDEO_TOKEN} or {AUDIO_TOKEN} "
                          "per medium, in order")
    for i, (placeholder, m) in enumerate(zip(found, media)):
        if placeholder != PLACEHOLDERS[m.kind]:
            raise PromptError(f"placeholder {i + 1} is {placeholder} but medium {i + 1} is {m.kind} "
                              f"(expected {PLACEHOLDERS[m.kind]})")
    items = iter(media)
    return _PLACEHOLDER_RE.sub(lambda _: next(items).expansion(), text)


@dataclass
class OmniInput:
    """Token ids of a multimodal prompt and where each medium's embeddings go."""

    ids: list[int]
    media: list[MediaEmbedding] = field(default_factory=list)
    positions: list[torch.Tensor] = field(default_factory=list)   # per medium, its placeholder positions

    def token_counts(self) -> dict[str, int]:
        counts = {"text": len(self.ids), "image": 0, "video": 0, "audio": 0}
        for m in self.media:
            counts[m.kind] += m.num_tokens
            counts["text"] -= m.num_tokens
        return counts

    def embeds(self, embed) -> torch.Tensor:
        """(len(ids), D): `embed(ids)` with each medium's embeddings at its positions."""
        x = embed(torch.tensor(self.ids, dtype=torch.long).view(1, -1))[0].clone()
        for m, pos in zip(self.media, self.positions):
            x[pos] = m.kept_embeds().to(x.dtype)
        return x


def build_input(tokenizer, text: str, media: list[MediaEmbedding], *, image_token_id: int,
                audio_token_id: int) -> OmniInput:
    """Expand `text`'s placeholders, tokenize, and locate each medium's placeholder tokens."""
    ids = tokenizer.encode(expand_placeholders(text, media))
    t = torch.tensor(ids, dtype=torch.long)
    where = {image_token_id: (t == image_token_id).nonzero().view(-1),
             audio_token_id: (t == audio_token_id).nonzero().view(-1)}
    used = {image_token_id: 0, audio_token_id: 0}
    positions = []
    for m in media:   # media appear in prompt order, so each takes the next run of its token
        tid = audio_token_id if m.kind == "audio" else image_token_id
        pos = where[tid][used[tid]:used[tid] + m.num_tokens]
        if len(pos) != m.num_tokens:
            raise PromptError(f"the tokenizer did not keep the {PLACEHOLDERS[m.kind]} placeholders as single tokens "
                              f"(found {len(pos)} of {m.num_tokens}); is this the model's tokenizer?")
        used[tid] += m.num_tokens
        positions.append(pos)
    for tid, n in used.items():
        if len(where[tid]) != n:
            raise PromptError(f"the prompt text holds {len(where[tid]) - n} placeholder token(s) id {tid} "
                              "that belong to no medium")
    return OmniInput(ids, list(media), positions)


# ---- the streaming layout's text: a session is stream_header(), its chunks, then question_tail(q) ----

_MARK = "\x00"     # stands for the stream's media while the chat template renders around it


def stream_header(instructions: str = "") -> str:
    """The text before a session's media: system turn, then the open user turn."""
    text = build_chat_prompt([{"role": "system", "content": instructions.replace(_MARK, "")},
                              {"role": "user", "content": _MARK}])
    return text.split(_MARK)[0]


def question_tail(question: str = "", reasoning: bool = True) -> str:
    """The text after a session's media: the question, the end of the user turn, the assistant header."""
    text = build_chat_prompt([{"role": "user", "content": _MARK + question.replace(_MARK, "")}], reasoning=reasoning)
    return text.split(_MARK)[1]
