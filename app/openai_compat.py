"""POST /v1/chat/completions and GET /v1/models, the way vLLM users already send media.

Messages are OpenAI chat messages; user content may be a string or a list of parts: `text`,
`image_url` ({url}), `input_audio` ({data, format}), `video_url` ({url}). Media must be inline
(base64 data URLs, or base64 `data` for input_audio): the server fetches nothing and opens no
path a client names. `chat_template_kwargs: {enable_thinking: false}` turns reasoning off as on
vLLM, and `guided_choice: [...]` (vLLM's field) makes the answer, after the reasoning, the one of
those strings the model finds likeliest. The conversation renders with the model's chat template; each medium becomes chunks from
the encoder service, prefilled in place between the text around it, in a throwaway engine
session. `stream: true` answers with server-sent events (`chat.completion.chunk`, then
`data: [DONE]`).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time

from engine.generate import SamplingParams
from engine.tokenizer import StreamDecoder, build_chat_prompt

from .engine_loop import ResponseRequest
from .link import Control, Media, PoolError
from .realtime import ProtocolError, check_image, choices_field, decode_base64, number_field, sampling_params

_MARK = "\x00"


class _Sink:
    """Receives the encoder's reports for one request."""

    def __init__(self):
        self.flushed = asyncio.Event()
        self.error: tuple[str, str] | None = None

    async def encoder_event(self, msg: Control) -> None:
        if msg.type == "flushed":
            self.flushed.set()
        elif msg.type == "error":
            self.error = (msg.data.get("code", "encoder_error"), str(msg.data.get("message", "")))
            if msg.data.get("code") == "encoder_unavailable":
                self.flushed.set()


def _media_part(part: dict, where: str, limit: int):
    kind = part.get("type")
    if kind == "image_url":
        url = (part.get("image_url") or {}).get("url") if isinstance(part.get("image_url"), dict) else part.get("image_url")
        _inline(url, where, "invalid_image")
        data = decode_base64(url, f"{where}.image_url.url", "invalid_image", limit, f"{where}.image_url")
        check_image(data, f"{where}.image_url")
        return "image", data
    if kind == "input_audio":
        audio = part.get("input_audio")
        if not isinstance(audio, dict):
            raise ProtocolError("invalid_audio", f"{where}.input_audio must be an object {{data, format}}", where)
        return "audio_file", decode_base64(audio.get("data"), f"{where}.input_audio.data", "invalid_audio", limit,
                                           f"{where}.input_audio.data")
    if kind == "video_url":
        url = (part.get("video_url") or {}).get("url") if isinstance(part.get("video_url"), dict) else part.get("video_url")
        _inline(url, where, "invalid_video")
        return "video_file", decode_base64(url, f"{where}.video_url.url", "invalid_video", limit, f"{where}.video_url")
    raise ProtocolError("invalid_value", f"{where}: unknown content part type {str(kind)[:40]!r} (text, image_url, "
                                         "input_audio, video_url)", f"{where}.type")


def _inline(url, where: str, code: str) -> None:
    if not isinstance(url, str) or not url.startswith("data:"):
        raise ProtocolError(code, f"{where}: media must be a base64 data URL; the server fetches no URL", where)


def parse_messages(body: dict, limit: int) -> tuple[list[dict], list[tuple[str, bytes]]]:
    """Chat messages with every medium replaced by a marker, and the media in order."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ProtocolError("invalid_value", "messages must be a non-empty list", "messages")
    out, media = [], []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "developer"):
            raise ProtocolError("invalid_value", f"{where} must be an object with role system, user or assistant", where)
        role = "system" if m["role"] == "developer" else m["role"]
        content = m.get("content")
        if content is None:
            content = ""
        if isinstance(content, str):
            text = content
        elif isinstance(content, list):
            pieces = []
            for j, part in enumerate(content):
                pw = f"{where}.content[{j}]"
                if not isinstance(part, dict):
                    raise ProtocolError("invalid_value", f"{pw} must be an object", pw)
                if part.get("type") == "text":
                    if not isinstance(part.get("text"), str):
                        raise ProtocolError("invalid_value", f"{pw}.text must be a string", pw)
                    pieces.append(part["text"])
                elif role != "user":
                    raise ProtocolError("invalid_value", f"{pw}: only user messages carry media", pw)
                else:
                    media.append(_media_part(part, pw, limit))
                    pieces.append(_MARK)
            text = "".join(pieces)
        else:
            raise ProtocolError("invalid_value", f"{where}.content must be a string or a list of parts", where)
        if role != "user" and _MARK in text:
            raise ProtocolError("invalid_value", f"{where}: NUL characters are not allowed", where)
        out.append({"role": role, "content": text})
    if out[-1]["role"] != "user":
        raise ProtocolError("invalid_value", "the last message must be a user message", "messages")
    return out, media


def _sampling(body: dict, limits) -> tuple[SamplingParams, bool]:
    max_tokens = number_field(body, "max_completion_tokens", 1, limits.max_output_tokens, None, True)
    max_tokens = max_tokens or number_field(body, "max_tokens", 1, limits.max_output_tokens, 256, True)
    kwargs = body.get("chat_template_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ProtocolError("invalid_value", "chat_template_kwargs must be an object", "chat_template_kwargs")
    reasoning = kwargs.get("enable_thinking", True)
    if not isinstance(reasoning, bool):
        raise ProtocolError("invalid_value", "chat_template_kwargs.enable_thinking must be a boolean",
                            "chat_template_kwargs")
    return sampling_params(body, max_tokens), reasoning


async def chat_completion(hub, body: dict):
    """Run one chat completion; returns (async iterator of text pieces, result dict filled at the end)."""
    limits = hub.limits
    if not isinstance(body, dict):
        raise ProtocolError("invalid_json", "the body must be a JSON object")
    messages, media = parse_messages(body, limits.max_file_bytes)
    params, reasoning = _sampling(body, limits)
    choices = choices_field(body.get("guided_choice"), "guided_choice")     # vLLM's name for it
    kinds = {k for k, _ in media}
    if kinds & {"image", "video_file"} and hub.capabilities.get("vision") is False:
        raise ProtocolError("invalid_image", "this model has no vision encoder: it takes no images or video")
    if "audio_file" in kinds and hub.capabilities.get("audio") is False:
        raise ProtocolError("invalid_audio", "this model has no audio encoder: it takes no audio")
    pieces = build_chat_prompt(messages, reasoning=reasoning).split(_MARK)
    sid = f"chat_{secrets.token_hex(8)}"
    engine, pool = hub.engine, hub.pool
    errors: list = []
    await engine.open_session(sid, pieces[0], lambda code, msg: errors.append((code, msg)))
    sink = _Sink()
    try:
        if media:
            pool.open(sid, {"clip_s": 30.0, "evs_rate": hub.evs_rate}, sink)
            for (kind, data), text in zip(media, pieces[1:-1] + [None]):
                sink.flushed.clear()
                try:
                    pool.submit(sid, Media(sid, kind, data, {"item_id": "input", "t_ms": 0}))
                    pool.submit(sid, Control(sid, "flush", {"token": sid}))
                except PoolError as e:
                    raise ProtocolError(e.code, str(e), type_="server_error") from None
                await sink.flushed.wait()
                if sink.error:
                    raise ProtocolError(*sink.error)
                if text is not None:
                    await engine.append(sid, text)
        handle = await engine.respond(ResponseRequest(f"chatcmpl-{secrets.token_hex(8)}", sid, pieces[-1], params,
                                                      choices=choices))
    except BaseException:
        await _cleanup(hub, sid, bool(media))
        raise
    result = {"id": handle.request.response_id, "created": int(time.time())}

    async def text_pieces():
        stream, stops = StreamDecoder(hub.tokenizer), set(engine.stop_ids)
        try:
            async for t in handle:
                if t not in stops:
                    piece = stream.feed(t)
                    if piece:
                        yield piece
            tail = stream.flush()
            if tail:
                yield tail
        finally:
            if handle.status is None:
                await engine.cancel(handle.request.response_id)
            await _cleanup(hub, sid, bool(media))
        if handle.status == "failed":
            raise ProtocolError(handle.reason or "failed", handle.error or "generation failed", type_="server_error")
        result.update(finish_reason="stop" if handle.status == "completed" else "length",
                      usage={"prompt_tokens": handle.input_tokens, "completion_tokens": handle.output_tokens,
                             "total_tokens": handle.input_tokens + handle.output_tokens})
    return text_pieces(), result


async def _cleanup(hub, sid: str, with_feed: bool) -> None:
    if with_feed:
        await hub.pool.close(sid)
    await hub.engine.close_session(sid)


def sse_chunks(pieces, result: dict, model: str):
    """The completion as OpenAI `chat.completion.chunk` server-sent events."""
    async def gen():
        def chunk(delta, finish=None, usage=None):
            c = {"id": result["id"], "object": "chat.completion.chunk", "created": result["created"], "model": model,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            if usage is not None:
                c["usage"] = usage
            return f"data: {json.dumps(c)}\n\n"
        yield chunk({"role": "assistant", "content": ""})
        try:
            async for piece in pieces:
                yield chunk({"content": piece})
        except ProtocolError as e:
            yield f"data: {json.dumps({'error': {'type': e.type, 'code': e.code, 'message': str(e)}})}\n\n"
            return
        yield chunk({}, result.get("finish_reason", "stop"), result.get("usage"))
        yield "data: [DONE]\n\n"
    return gen()


async def full_completion(pieces, result: dict, model: str) -> dict:
    text = "".join([p async for p in pieces])
    return {"id": result["id"], "object": "chat.completion", "created": result["created"], "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": result.get("finish_reason", "stop")}],
            "usage": result.get("usage")}


def models_list(model: str, created: int) -> dict:
    return {"object": "list", "data": [{"id": model, "object": "model", "created": created, "owned_by": "omnistream"}]}
