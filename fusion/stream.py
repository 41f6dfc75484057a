"""The embedding stream: time-stamped chunks of projected embeddings, in the order the decoder reads them.

One `EmbeddingChunk` type crosses every boundary: an encoder produces it, the link (in-process
queue or WebSocket) carries it, and the decoder prefills it into the session. A chunk is the
label text that precedes it plus its embeddings between start and end markers:

    video   "Frame 3 sampled at 1.00 seconds and frame 4 sampled at 1.50 seconds: " <img> e*n </img> "\n"
    audio   "Audio from 4.00 to 6.00 seconds: " <so_start> e*n <so_end> "\n"    (audio_chunk_label)

A session's input is a chat header, then its chunks in time order (audio and video of the same
moment side by side, the video first, as the reference places audio-in-video after the video),
then, per question, the question and the assistant header. A model whose config.json asks for
`stream_narration` (the bundled default model) follows each chunk with its own short caption of
what the chunk holds, `(heard: a bell) ` / `(seen: a pink star) `, generated greedily by the
model as the chunk arrives (`narrate`): later questions then find events by reading text.
`ChunkMerger` restores time order
across modalities that arrive independently; `EvsStream` applies Efficient Video Sampling
causally, chunk by chunk, for live video.
"""

from __future__ import annotations

import heapq
import re
from dataclasses import dataclass, field

import torch

from kernels.evs import evs_dissimilarity

from .prompt import AUDIO_TOKEN, IMAGE_TOKEN, IMG_END, IMG_START, SO_END, SO_START

MODALITY_ORDER = {"video": 0, "image": 1, "audio": 2}   # at equal start times


@dataclass
class EmbeddingChunk:
    """One encoded piece of a session's media.

    session: the session it belongs to. modality: "video" | "image" | "audio".
    t0, t1: its media time span in seconds. label: the text placed before it.
    embeds: (n, D) projected embeddings (after every token reduction). seq: its number within
    the session and modality, from 0, so a receiver can tell a gap from a reorder.
    """

    session: str
    modality: str
    t0: float
    t1: float
    label: str
    embeds: torch.Tensor
    seq: int = 0

    def __post_init__(self):
        if self.modality not in MODALITY_ORDER:
            raise ValueError(f"chunk modality must be one of {sorted(MODALITY_ORDER)}, got {self.modality!r}")
        if not (self.t1 >= self.t0 >= 0):
            raise ValueError(f"chunk time span must satisfy 0 <= t0 <= t1, got {self.t0}..{self.t1}")
        if self.embeds.dim() != 2:
            raise ValueError(f"chunk embeddings must be (n, D), got {tuple(self.embeds.shape)}")

    @property
    def num_tokens(self) -> int:
        return self.embeds.shape[0]

    def text(self) -> str:
        """The chunk as prompt text, placeholders in place of its embeddings."""
        if self.modality == "audio":
            return self.label + SO_START + AUDIO_TOKEN * self.num_tokens + SO_END + "\n"
        return self.label + IMG_START + IMAGE_TOKEN * self.num_tokens + IMG_END + "\n"

    def sort_key(self) -> tuple:
        return (self.t0, MODALITY_ORDER[self.modality], self.seq)


def audio_chunk_label(t0: float, t1: float) -> str:
    """The text before an audio chunk: its media time span, as video frame labels give theirs (the
    default model reads audio in short chunks, each placed after the video of the same moment)."""
    return f"Audio from {t0:.2f} to {t1:.2f} seconds: "


@dataclass(frozen=True)
class Narration:
    """How a narrating model captions each chunk (config.json `stream_narration`): `prefix` opens
    the caption of a chunk of that modality, the model writes what it holds up to `close`, and
    the caption ends `close + " "`; at most `max_new_tokens` generated. A prefix may hold
    `{second}`, the chunk's start in whole seconds (`(heard from second {second}: `): the engine
    writes it, and a question's reasoning can then find a moment's caption by that key. `context`
    is what the caption is written from: "session", the stream so far; "chunk", the chunk read
    alone after the stream header (`Narrator`), as the default model's single-chunk training rows
    are. Either way the caption is then appended to the session, and questions read it there."""

    prefix: dict
    close: str = ")"
    max_new_tokens: int = 48
    context: str = "session"

    def opening(self, modality: str, t0: float) -> str:
        """The prefix of a `modality` chunk starting at `t0` seconds, `{second}` filled in."""
        return self.prefix[modality].replace("{second}", str(int(round(t0))))

    def caption(self, modality: str, things: list[str], t0: float = 0.0) -> str:
        """The caption of a chunk holding `things`, starting at `t0` seconds (the training target;
        `narrate` writes the same)."""
        return self.opening(modality, t0) + ("; ".join(things) or "nothing") + self.close + " "

    def things(self, caption: str, modality: str) -> list[str]:
        """The things a caption of `modality` names, in order: `caption` read back ([] for "nothing";
        ValueError if it is not this narration's form)."""
        head, key, rest = self.prefix[modality].partition("{second}")
        opening = re.escape(head) + r"\d+" + re.escape(rest.rstrip()) if key else re.escape(head.rstrip())
        m = re.fullmatch(opening + r" ?(.*)" + re.escape(self.close) + " ?", caption, flags=re.S)
        if m is None:
            raise ValueError(f"not a {modality} caption of this narration: {caption!r}")
        return [] if m.group(1) == "nothing" else m.group(1).split("; ")

    @classmethod
    def from_dict(cls, raw: dict | None, source: str = "config.json") -> "Narration | None":
        if raw is None:
            return None
        prefix = raw.get("prefix") if isinstance(raw, dict) else None
        if not isinstance(prefix, dict) or not prefix or not all(
                m in MODALITY_ORDER and isinstance(v, str) and v for m, v in prefix.items()):
            raise ValueError(f"{source}: stream_narration.prefix must map modalities ({sorted(MODALITY_ORDER)}) "
                             f"to non-empty text, got {prefix!r}")
        for v in prefix.values():
            if v.count("{second}") > 1 or re.search(r"[{}]", v.replace("{second}", "")):
                raise ValueError(f"{source}: stream_narration.prefix {v!r} may hold \"{{second}}\" once and no "
                                 "other braces")
        close, limit = raw.get("close", ")"), raw.get("max_new_tokens", 48)
        if not isinstance(close, str) or not close or not isinstance(limit, int) or not 1 <= limit <= 512:
            raise ValueError(f"{source}: stream_narration needs a non-empty close text and max_new_tokens in "
                             f"1..512, got {close!r}, {limit!r}")
        context = raw.get("context", "session")
        if context not in ("session", "chunk"):
            raise ValueError(f"{source}: stream_narration.context must be \"session\" or \"chunk\", got {context!r}")
        return cls(dict(prefix), close, limit, context)


NARRATION_BATCH = 16     # captions decoded together where each reads only its own chunk (context "chunk")


class Narrator:
    """Captions a narrating model writes of its stream's chunks (`narrate`). With `context` "chunk"
    each caption is written from a fork of a session that holds only the stream header (prefilled
    on first use), with the chunk's input after it: in the stream's own session the default model
    copies its earlier captions, read alone it names what the chunk holds. Such a caption depends
    on its chunk alone, so `captions` writes many at once, before the session reads them."""

    def __init__(self, model, tokenizer, narration: Narration):
        self.model, self.tokenizer, self.narration = model, tokenizer, narration
        self._header = None

    def _reader(self, chunk_embeds: torch.Tensor):
        """A session holding the stream header and then the chunk (context "chunk")."""
        if self._header is None:
            from engine.generate import Session

            from .prompt import stream_header
            self._header = Session(self.model)
            self._header.prefill(self.tokenizer.encode(stream_header()))
        reader = self._header.fork()
        reader.check_room(chunk_embeds.shape[0])
        reader.prefill(embeds=chunk_embeds)
        return reader

    def captions(self, chunks: list[EmbeddingChunk], chunk_embeds: list[torch.Tensor]) -> list[str] | None:
        """Context "chunk": the captions of `chunks` (their decoder inputs, chunk_input's (L, D)),
        NARRATION_BATCH decoded together; None for context "session", where each caption reads the
        session up to its chunk and must be written in turn (`__call__`)."""
        if self.narration.context != "chunk":
            return None
        out = []
        for first in range(0, len(chunks), NARRATION_BATCH):
            part = slice(first, first + NARRATION_BATCH)
            out += write_captions([self._reader(x) for x in chunk_embeds[part]], chunks[part], self.tokenizer,
                                  self.narration)
        return out

    def __call__(self, session, chunk: EmbeddingChunk, chunk_embeds: torch.Tensor, caption: str | None = None) -> str:
        """After `chunk` (its decoder input `chunk_embeds`) was prefilled into `session`: append its
        caption to the session and return it. `caption`: the one `captions` wrote, else written now."""
        if caption is None:
            reader = self._reader(chunk_embeds) if self.narration.context == "chunk" else None
            return narrate(session, chunk, self.tokenizer, self.narration, reader)
        append_caption(session, caption, self.tokenizer)
        return caption


def write_captions(readers: list, chunks: list[EmbeddingChunk], tokenizer, narration: Narration) -> list[str]:
    """The model's greedy caption of each chunk, continuing its reader (a session that has read it),
    all decoded together (engine.generate.BatchDecoder; the readers are left as they were). A
    caption is one line, ended by the close text; "" for a modality the model does not narrate."""
    from engine.generate import BatchDecoder, SamplingParams

    out = [""] * len(chunks)
    batch, heads, got = None, {}, {}
    for k, (reader, chunk) in enumerate(zip(readers, chunks)):
        if chunk.modality not in narration.prefix:
            continue
        # The opening without its trailing space: byte-level BPE puts a word's space in the word's
        # token (" a", " bell"), so "(heard: " + " a" would never have been seen in training.
        heads[k] = narration.opening(chunk.modality, chunk.t0).rstrip()
        fork = reader.fork()
        fork.prefill(tokenizer.encode(heads[k]))
        fork.check_room(1)
        room = fork.model.cfg.max_position_embeddings - fork.length
        batch = batch or BatchDecoder(fork.model)
        batch.join(fork, SamplingParams(max_new_tokens=min(narration.max_new_tokens, room), temperature=0.0,
                                        stop_ids=tuple(tokenizer.eos_ids)))
        got[id(fork)] = (k, [])
    while batch is not None and len(batch):
        for fork, t in batch.step():
            if t in tokenizer.eos_ids:                  # the batch retires it
                continue
            ids = got[id(fork)][1]
            ids.append(t)
            text = tokenizer.decode(ids)
            if narration.close in text or "\n" in text:
                batch.leave(fork)
    for k, ids in got.values():
        body = (heads[k] + tokenizer.decode(ids)).split(narration.close)[0].split("\n")[0].rstrip()
        out[k] = body + narration.close + " "
    return out


def append_caption(session, caption: str, tokenizer) -> None:
    """A caption appended to the session as text, tokenized as training tokenized it ("" adds nothing)."""
    if caption:
        ids = tokenizer.encode(caption)
        session.check_room(len(ids))
        session.prefill(ids)


def narrate(session, chunk: EmbeddingChunk, tokenizer, narration: Narration, reader=None) -> str:
    """After `chunk` was prefilled into `session`: the model's greedy caption of it, appended to
    the session (`append_caption`); returns the caption ("" for a modality the model does not
    narrate). The caption continues `reader` (default: `session`; `Narrator` passes the chunk read
    alone for `context` "chunk"), so the tokens appended are exactly `tokenizer.encode(caption)`."""
    caption = write_captions([session if reader is None else reader], [chunk], tokenizer, narration)[0]
    append_caption(session, caption, tokenizer)
    return caption


def chunk_input(chunk: EmbeddingChunk, tokenizer, embed, placeholder_id: int) -> torch.Tensor:
    """(L, D) decoder input of one chunk: its text's embeddings with the chunk's in the placeholders."""
    ids = torch.tensor(tokenizer.encode(chunk.text()), dtype=torch.long)
    x = embed(ids.view(1, -1))[0].clone()
    pos = (ids == placeholder_id).nonzero().view(-1)
    if len(pos) != chunk.num_tokens:
        raise ValueError(f"chunk text holds {len(pos)} placeholders for {chunk.num_tokens} embeddings; "
                         "is this the model's tokenizer?")
    x[pos] = chunk.embeds.to(x.dtype)
    return x


@dataclass
class ChunkMerger:
    """Merges chunks of several modalities into time order.

    `push(chunk)` returns the chunks now safe to release: those starting no later than every
    open modality's latest start time (a later chunk of another modality could still come
    before them otherwise). `close(modality)` says a modality has ended; `flush()` releases all.
    """

    modalities: tuple[str, ...] = ("video", "audio")
    _heap: list = field(default_factory=list)
    _latest: dict = field(default_factory=dict)
    _open: set = field(default_factory=set)

    def __post_init__(self):
        self._open = set(self.modalities)

    def push(self, chunk: EmbeddingChunk) -> list[EmbeddingChunk]:
        heapq.heappush(self._heap, (chunk.sort_key(), id(chunk), chunk))
        self._latest[chunk.modality] = max(self._latest.get(chunk.modality, 0.0), chunk.t0)
        return self._release()

    def close(self, modality: str) -> list[EmbeddingChunk]:
        self._open.discard(modality)
        return self._release()

    def flush(self) -> list[EmbeddingChunk]:
        out = [c for _, _, c in sorted(self._heap)]
        self._heap.clear()
        return out

    def _release(self) -> list[EmbeddingChunk]:
        if any(m not in self._latest for m in self._open):
            return []                       # an open modality has not spoken yet
        horizon = min((self._latest[m] for m in self._open), default=float("inf"))
        out = []
        while self._heap and self._heap[0][0][0] <= horizon:
            out.append(heapq.heappop(self._heap)[2])
        return out


class EvsStream:
    """Efficient Video Sampling applied causally to a live video, chunk by chunk.

    The whole-clip EVS of the reference ranks every token of a finished video; a live stream
    cannot wait for the end. Here each chunk of tubelets is scored against the tubelet before it
    (the previous chunk's last, carried over), and keeps `round(T * n * (1 - rate))` tokens of
    highest dissimilarity, in order; the stream's first tubelet is always kept whole. Over a
    stream this keeps the same share of tokens as the reference.
    """

    def __init__(self, rate: float):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"EVS pruning rate must be in [0, 1), got {rate}")
        self.rate = rate
        self.prev: torch.Tensor | None = None    # (n, D): the last tubelet seen

    def keep_mask(self, tubelets: torch.Tensor) -> torch.Tensor:
        """(T, n, D) projected tubelets of one chunk -> bool (T, n)."""
        t, n = tubelets.shape[:2]
        if self.rate == 0.0:
            self.prev = tubelets[-1]
            return torch.ones(t, n, dtype=torch.bool)
        first = self.prev is None
        joined = tubelets if first else torch.cat([self.prev[None], tubelets])
        scores = evs_dissimilarity(joined)[(0 if first else 1):].reshape(-1)
        budget = round(t * n * (1 - self.rate))
        if first:
            budget = max(budget, n)          # the first tubelet (score 255) is kept whole
        keep = torch.zeros(t * n, dtype=torch.bool)
        keep[torch.argsort(scores, descending=True, stable=True)[:budget]] = True
        self.prev = tubelets[-1]
        return keep.view(t, n)
