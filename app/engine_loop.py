"""The engine loop: the one worker that owns the decoder.

Everything that touches the model runs here, in one thread, step after step: pending input
(chat headers, text, arriving `EmbeddingChunk`s) is prefilled into its session, then every
active answer decodes one token together (`BatchDecoder`, continuous batching: answers join and
leave between steps). The asyncio side talks to it only through a bounded inbox and gets token
ids back through each answer's queue; a full inbox makes producers wait.

A session's decoder input is its chat header (system instructions, the open user turn), then
its chunks in arrival order (a narrating model follows each with its caption of it, written as
the chunk is prefilled; captions that read their chunk alone are written ahead for the chunks
queued together, up to 16 decoded at once); a question is answered from a fork of that state (the question
text, the end of the user turn, the assistant header), so the stream keeps appending to the
original while the answer decodes. The fork shares the KV cache and is thrown away after.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import time
from dataclasses import dataclass, field, replace

import torch

from app.evaluate import best_choice, choice_ids
from engine.generate import BatchDecoder, SamplingParams, Session
from engine.tokenizer import THINK_END, ReasoningBudget
from fusion.stream import NARRATION_BATCH, EmbeddingChunk, Narration, Narrator, chunk_input

IDLE_FLUSH_S = 0.1       # with no answer decoding, the longest the loop works before sending events out


class EngineError(ValueError):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class ResponseRequest:
    response_id: str
    session: str
    tail: str                          # text after the stream (see question_tail)
    params: SamplingParams
    reasoning_budget: int | None = None
    # guided choice: the answer after the reasoning is the one of these the model finds likeliest
    choices: tuple[str, ...] | None = None


@dataclass
class ResponseHandle:
    """An answer as the asyncio side sees it: `async for token_id in handle`, then `status`."""
    request: ResponseRequest
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    created_at: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    status: str | None = None          # completed | cancelled | incomplete | failed
    reason: str | None = None
    error: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0

    def __aiter__(self):
        return self

    async def __anext__(self) -> int:
        item = await self.queue.get()
        if item is None:
            raise StopAsyncIteration
        return item

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.created_at


@dataclass
class _Stream:
    session: Session
    on_error: object                   # callable(code, message), run on the asyncio side
    on_caption: object = None          # callable(chunk, caption), run on the asyncio side
    tokens: int = 0
    chunks: int = 0
    captions: collections.deque = field(default_factory=lambda: collections.deque(maxlen=8))  # the latest
                                       # (modality, t0, t1, caption) a narrating model wrote


@dataclass
class _Answer:
    handle: ResponseHandle
    stream_id: str
    fork: Session
    params: SamplingParams
    budget: ReasoningBudget | None
    choices: tuple[str, ...] | None = None
    produced: int = 0
    last: int | None = None


class EngineLoop:
    """Owns the decoder; see the module docstring. Start with `await start()`."""

    def __init__(self, decoder, tokenizer, *, image_token_id: int, audio_token_id: int, max_inbox: int = 256,
                 prefill_tokens_per_step: int = 2048, narration: Narration | None = None):
        self.decoder, self.tokenizer = decoder, tokenizer
        self.narration = narration          # a narrating model captions each chunk (fusion.stream.Narrator)
        self.placeholder = {"image": image_token_id, "video": image_token_id, "audio": audio_token_id}
        self.inbox: asyncio.Queue = asyncio.Queue(max_inbox)
        self.prefill_tokens_per_step = prefill_tokens_per_step
        self.stop_ids = tuple(tokenizer.eos_ids)
        self._think_end = tokenizer.token_id(THINK_END) if tokenizer.has_token(THINK_END) else None
        # owned by the engine thread
        self._streams: dict[str, _Stream] = {}
        self._answers: dict[str, _Answer] = {}
        self._batch = BatchDecoder(decoder)
        self._pending: collections.deque = collections.deque()
        self._written: dict[int, str] = {}    # id(chunk) -> its caption, written ahead (`_write_ahead`)
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="engine")
        self._task: asyncio.Task | None = None
        self.steps = 0
        self.prefilled_chunks = 0

    @property
    def narration(self) -> Narration | None:
        return self._narrator.narration if self._narrator is not None else None

    @narration.setter
    def narration(self, narration: Narration | None) -> None:
        self._narrator = Narrator(self.decoder, self.tokenizer, narration) if narration is not None else None

    # ---- the asyncio side ----------------------------------------------------------------------
    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="engine-loop")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._thread.shutdown(wait=True)

    async def open_session(self, sid: str, header: str, on_error, on_caption=None) -> None:
        """A new stream: `on_error(code, message)` reports a failed append; a narrating model's
        caption of each chunk goes to `on_caption(chunk, caption)` (both run on the asyncio side)."""
        await self.inbox.put(("open", sid, header, on_error, on_caption))

    async def append(self, sid: str, piece: str | EmbeddingChunk) -> None:
        """Queue text or a chunk for the session's stream (waits while the inbox is full)."""
        await self.inbox.put(("append", sid, piece))

    async def respond(self, request: ResponseRequest) -> ResponseHandle:
        handle = ResponseHandle(request)
        await self.inbox.put(("respond", handle))
        return handle

    async def cancel(self, response_id: str) -> None:
        await self.inbox.put(("cancel", response_id))

    async def close_session(self, sid: str) -> None:
        await self.inbox.put(("close", sid))

    async def stats(self) -> dict:
        """Sessions, answers and the bytes their states hold, once everything queued before is done."""
        fut = asyncio.get_running_loop().create_future()
        await self.inbox.put(("stats", fut))
        return await fut

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            cmds = []
            if not self._pending and not len(self._batch):
                cmds.append(await self.inbox.get())
            while not self.inbox.empty() and len(cmds) < 256:
                cmds.append(self.inbox.get_nowait())
            try:
                deliveries = await loop.run_in_executor(self._thread, self._work, cmds)
            except asyncio.CancelledError:
                raise
            for deliver in deliveries:
                deliver()

    # ---- the engine thread -----------------------------------------------------------------------
    @torch.inference_mode()
    def _work(self, cmds: list) -> list:
        out: list = []
        self._pending.extend(cmds)
        budget = self.prefill_tokens_per_step if len(self._batch) else float("inf")
        spent = 0
        # Idle, the queue is read at once, but events (a narrating model's captions, errors) go out
        # at least every IDLE_FLUSH_S: a long upload's captions stream as it is read, not in one burst.
        flush_at = time.perf_counter() + IDLE_FLUSH_S
        while self._pending and spent < budget:
            cmd = self._pending.popleft()
            try:
                spent += self._command(cmd, out)
            except Exception as e:                    # a bug must not take the loop down
                out.append(lambda e=e, cmd=cmd: print(f"engine: {cmd[0]} failed: {e!r}"))
            if not len(self._batch) and time.perf_counter() >= flush_at:
                break
        if len(self._batch):
            self._decode_step(out)
        return out

    def _command(self, cmd, out: list) -> int:
        kind = cmd[0]
        if kind == "open":
            _, sid, header, on_error, on_caption = cmd
            self._streams[sid] = stream = _Stream(Session(self.decoder), on_error, on_caption)
            return self._prefill(sid, stream, header, out)
        if kind == "append":
            _, sid, piece = cmd
            stream = self._streams.get(sid)
            if stream is None:
                return 0
            if isinstance(piece, EmbeddingChunk) and id(piece) not in self._written:
                self._write_ahead(piece)
            return self._prefill(sid, stream, piece, out)
        if kind == "respond":
            self._start_answer(cmd[1], out)
            return 0
        if kind == "cancel":
            ans = self._answers.get(cmd[1])
            if ans is not None:
                self._finish(ans, "cancelled", "client_cancelled", out)
            return 0
        if kind == "close":
            self._streams.pop(cmd[1], None)
            for ans in [a for a in self._answers.values() if a.stream_id == cmd[1]]:
                self._finish(ans, "cancelled", "session_closed", out)
            return 0
        if kind == "stats":
            stats = self._stats()
            out.append(lambda f=cmd[1]: f.done() or f.set_result(stats))
            return 0
        raise ValueError(f"unknown engine command {kind!r}")

    def _write_ahead(self, first: EmbeddingChunk) -> None:
        """Captions that read their chunk alone (context "chunk") of `first` and of the chunks queued
        right after it (an upload's, any session's), written together (Narrator.captions) for
        `_prefill` to append as it reads each chunk in turn."""
        if self._narrator is None or self._narrator.narration.context != "chunk":
            return
        group = [first]
        for cmd in self._pending:
            if (len(group) == NARRATION_BATCH or cmd[0] != "append" or not isinstance(cmd[2], EmbeddingChunk)
                    or cmd[1] not in self._streams):
                break
            group.append(cmd[2])
        if len(group) == 1:
            return
        try:
            xs = [chunk_input(c, self.tokenizer, self.decoder.embed, self.placeholder[c.modality]) for c in group]
            captions = self._narrator.captions(group, xs)
        except Exception:                    # a bad chunk: each then meets its own error in turn
            return
        self._written.update({id(c): caption for c, caption in zip(group, captions)})

    def _prefill(self, sid: str, stream: _Stream, piece, out: list) -> int:
        written = self._written.pop(id(piece), None)
        try:
            if isinstance(piece, EmbeddingChunk):
                x = chunk_input(piece, self.tokenizer, self.decoder.embed, self.placeholder[piece.modality])
                before = stream.session.length
                stream.session.prefill(embeds=x)
                stream.chunks += 1
                self.prefilled_chunks += 1
                if self._narrator is not None:
                    caption = self._narrator(stream.session, piece, x, written)
                    stream.captions.append((piece.modality, piece.t0, piece.t1, caption))
                    if caption and stream.on_caption is not None:
                        out.append(lambda c=piece, t=caption: stream.on_caption(c, t))
                n = stream.session.length - before
            else:
                ids = self.tokenizer.encode(piece)
                stream.session.prefill(ids)
                n = len(ids)
        except ValueError as e:
            out.append(lambda e=e: stream.on_error("context_length_exceeded" if "context length" in str(e)
                                                   else "invalid_embeddings", str(e)))
            return 0
        stream.tokens += n
        return n

    def _start_answer(self, handle: ResponseHandle, out: list) -> None:
        req = handle.request
        stream = self._streams.get(req.session)
        if stream is None:
            return self._fail(handle, "session_not_found", f"session {req.session!r} is closed", out)
        if stream.session.logits is None and not req.tail:
            return self._fail(handle, "empty_input", "nothing to answer from: the session holds no input", out)
        fork = stream.session.fork()
        try:
            ids = self.tokenizer.encode(req.tail)
            fork.prefill(ids)
            fork.check_room(1)
        except ValueError as e:
            return self._fail(handle, "context_length_exceeded", str(e), out)
        handle.input_tokens = fork.length
        budget = None
        if req.reasoning_budget is not None and self._think_end is not None:
            close = self.tokenizer.encode("\n") + [self._think_end]
            budget = ReasoningBudget(max(1, req.reasoning_budget), self._think_end, close)
        params = replace(req.params, stop_ids=tuple(req.params.stop_ids) or self.stop_ids)
        if req.choices and self._think_end is not None:     # the reasoning stops at </think>; then `_choose`
            params = replace(params, stop_ids=params.stop_ids + (self._think_end,))
        ans = _Answer(handle, req.session, fork, params, budget, req.choices)
        self._answers[req.response_id] = ans
        if params.max_new_tokens == 0:
            return self._finish(ans, "incomplete", "max_output_tokens", out)
        if req.choices and (self._think_end is None or ids[-1:] == [self._think_end]):   # no reasoning to write
            ans.last = self._think_end
            return self._choose(ans, out)
        self._batch.join(fork, params)

    def _choose(self, ans: _Answer, out: list) -> None:
        """A guided-choice answer after its reasoning: the choice the model gives the highest
        likelihood (app.evaluate.best_choice, as `python -m app eval --guided-choice` scores),
        written out and ended, within the answer's token limit."""
        room = ans.params.max_new_tokens - ans.produced
        if room <= 0:
            return self._finish(ans, "incomplete", "max_output_tokens", out)
        close = [] if ans.last == self._think_end or self._think_end is None else [self._think_end]
        if close:             # the turn ended inside the reasoning: close it, as eval --guided-choice does
            ans.fork.prefill(close)
        whole = close + choice_ids(self.tokenizer, best_choice(ans.fork, self.tokenizer, list(ans.choices)))
        ids = whole[:room]
        for t in ids:
            out.append(lambda h=ans.handle, t=t: _deliver(h, t))
        ans.produced += len(ids)
        done = len(ids) == len(whole)
        self._finish(ans, "completed" if done else "incomplete", None if done else "max_output_tokens", out)

    def _decode_step(self, out: list) -> None:
        by_fork = {id(a.fork): a for a in self._answers.values()}
        emitted = self._batch.step()
        self.steps += 1
        for sess, tok in emitted:
            ans = by_fork[id(sess)]
            ans.produced += 1
            ans.last = tok
            out.append(lambda h=ans.handle, t=tok: _deliver(h, t))
            forced = ans.budget.step(tok) if ans.budget is not None and tok not in ans.params.stop_ids else None
            if forced and self._batch.has(sess):
                self._batch.leave(sess)
                forced = forced[:ans.params.max_new_tokens - ans.produced]
                if forced:
                    sess.prefill(forced)
                    for t in forced:
                        out.append(lambda h=ans.handle, t=t: _deliver(h, t))
                    ans.produced += len(forced)
                    ans.last = forced[-1]
                left = ans.params.max_new_tokens - ans.produced
                if left > 0 and ans.last not in ans.params.stop_ids:      # a forced stop ends it too
                    self._batch.join(sess, replace(ans.params, max_new_tokens=left))
        for ans in list(self._answers.values()):
            if not self._batch.has(ans.fork):
                if ans.choices and ans.last in ans.params.stop_ids:     # the reasoning is done: choose
                    self._choose(ans, out)
                elif ans.last in ans.params.stop_ids:
                    self._finish(ans, "completed", None, out)
                else:
                    self._finish(ans, "incomplete", "max_output_tokens", out)

    def _finish(self, ans: _Answer, status: str, reason: str | None, out: list) -> None:
        if self._batch.has(ans.fork):
            self._batch.leave(ans.fork)
        self._answers.pop(ans.handle.request.response_id, None)
        h, n = ans.handle, ans.produced

        def deliver():
            h.status, h.reason, h.output_tokens = status, reason, n
            h.queue.put_nowait(None)
        out.append(deliver)

    def _fail(self, handle: ResponseHandle, code: str, message: str, out: list) -> None:
        def deliver():
            handle.status, handle.reason, handle.error = "failed", code, message
            handle.queue.put_nowait(None)
        out.append(deliver)

    def _stats(self) -> dict:
        own = sum(s.session.memory_bytes()["own"] for s in self._streams.values())
        if self._batch.state is not None:
            own += self._batch.state.memory_bytes()["own"]
        return {"sessions": len(self._streams), "answers": len(self._answers), "state_bytes": own,
                "steps": self.steps, "prefilled_chunks": self.prefilled_chunks,
                "session_tokens": {k: s.tokens for k, s in self._streams.items()},
                "captions": {k: list(s.captions) for k, s in self._streams.items() if s.captions}}


def _deliver(handle: ResponseHandle, token: int) -> None:
    if handle.first_token_at is None:
        handle.first_token_at = time.perf_counter()
    handle.queue.put_nowait(token)
