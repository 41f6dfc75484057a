"""The FastAPI application: the public API, the UI page, auth and limits, on one port.

    GET  /                      the UI (app/ui.py: a Gradio app mounted after every route below)
    GET  /example               the example page of omnistream.js
    GET  /static/...            omnistream.js, the UI's and the example page's files
    GET  /health                liveness, model, sessions, encoders (no key needed)
    GET  /v1/models             the served model
    POST /v1/chat/completions   OpenAI chat with image / audio / video parts, SSE streaming
    WS   /v1/realtime           the streaming API (app/realtime.py)

`create_app(config)` loads the model in its lifespan (or takes a loaded `OmniModel`), starts the
engine loop and the encoder pool, and either runs the encoders in-process (messages through a
queue) or serves the embedding link on `config.link_port` for `python -m app encoder` services.
With an API key set, every route but /health and the page wants it (Authorization: Bearer, or
for browsers the WebSocket subprotocol `openai-insecure-api-key.KEY`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from .engine_loop import EngineLoop
from .link import EncoderPool, LinkLimits, queue_link, serve_link
from .realtime import Limits, ProtocolError, RealtimeHub, error_event

STATIC = Path(__file__).resolve().parent / "static"


@dataclass
class ServerConfig:
    model_dir: Path | None = None
    model_name: str | None = None
    api_key: str | None = None
    limits: Limits = field(default_factory=Limits)
    in_process_encoder: bool = True      # False: encoders connect to the link (python -m app encoder)
    link_host: str = "127.0.0.1"
    link_port: int | None = None         # serve the embedding link here (0: any free port)
    vad: str = "auto"
    clip_s: float = 2.0
    threads: int | None = None
    dtype: str | None = None


class Server:
    """Everything the routes share, built in the app's lifespan."""

    def __init__(self, config: ServerConfig, omni=None):
        self.config, self.omni = config, omni
        self.started = int(time.time())
        self.engine = self.pool = self.hub = None
        self.link_server = None
        self.link_port: int | None = None
        self._tasks: list[asyncio.Task] = []
        self.encoder_service = None

    async def start(self) -> None:
        import torch
        from fusion.omni import OmniModel
        cfg = self.config
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if self.omni is None:
            dtype = getattr(torch, cfg.dtype) if cfg.dtype else None
            self.omni = await asyncio.to_thread(OmniModel.load, cfg.model_dir, dtype)
        omni = self.omni
        if omni.decoder.device.type == "cpu":
            # The C++ decode kernels compile on first use (about 20 s, once per machine): start that
            # now, beside the page coming up, rather than inside the first question's answer.
            from kernels import cpu
            self._tasks.append(asyncio.get_running_loop().create_task(asyncio.to_thread(cpu.ops)))
        name = cfg.model_name or (Path(cfg.model_dir).name if cfg.model_dir else "omnistream")
        self.engine = EngineLoop(omni.decoder, omni.tokenizer, image_token_id=omni.settings.image_token_id,
                                 audio_token_id=omni.settings.audio_token_id, narration=omni.settings.narration)
        await self.engine.start()
        self.pool = EncoderPool(self.engine, max_frames=cfg.limits.max_pending_frames,
                                max_audio_s=cfg.limits.max_audio_backlog_s)
        caps = {"audio": omni.audio is not None, "vision": omni.vision is not None}
        if not cfg.in_process_encoder:      # encoders may have towers this process lacks
            caps = {}
        self.hub = RealtimeHub(self.engine, self.pool, omni.tokenizer, model_name=name, limits=cfg.limits,
                               capabilities=caps, vad_kind=cfg.vad, evs_rate=omni.settings.video_pruning_rate,
                               api_key=cfg.api_key)
        loop = asyncio.get_running_loop()
        if cfg.in_process_encoder:
            from .encoder_service import EncoderService, serve_encoder
            import concurrent.futures
            from .link import Control
            self.encoder_service = EncoderService.from_omni(omni, clip_s=cfg.clip_s)
            dec_end, enc_end = queue_link(64)
            executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="encoder")
            await enc_end.send(Control("", "hello", {"name": "in-process"}))
            self._tasks.append(loop.create_task(self.pool.serve(dec_end)))
            self._tasks.append(loop.create_task(serve_encoder(enc_end, self.encoder_service, executor)))
        if cfg.link_port is not None:
            self.link_server = await serve_link(self.pool.serve, cfg.link_host, cfg.link_port,
                                                LinkLimits(max_frame_bytes=max(64 << 20, 2 * cfg.limits.max_file_bytes)),
                                                api_key=cfg.api_key)
            self.link_port = self.link_server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.hub is not None:
            await self.hub.shutdown(notice_s=0.2)
        if self.link_server is not None:
            self.link_server.close()
            await self.link_server.wait_closed()
        for t in self._tasks:
            t.cancel()
        if self.engine is not None:
            await self.engine.stop()

    def authorized(self, authorization: str | None) -> bool:
        key = self.config.api_key
        if not key:
            return True
        if not authorization or not authorization.lower().startswith("bearer "):
            return False
        return hmac.compare_digest(authorization[7:].strip().encode(), key.encode())


def create_app(config: ServerConfig, omni=None):
    from . import openai_compat

    server = Server(config, omni)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await server.start()
        app.state.server = server
        try:
            yield
        finally:
            await server.stop()

    app = FastAPI(title="omnistream", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def api_error(status: int, code: str, message: str, param=None, type_="invalid_request_error"):
        return JSONResponse(status_code=status, content={"error": {"type": type_, "code": code, "message": message,
                                                                   "param": param}})

    def denied(request: Request):
        if server.authorized(request.headers.get("authorization")):
            return None
        return api_error(401, "unauthorized", "missing or wrong API key (Authorization: Bearer KEY)",
                         type_="authentication_error")

    @app.get("/example")
    async def index():
        return FileResponse(STATIC / "index.html")

    @app.get("/health")
    async def health():
        s = server
        return {"status": "ok", "model": s.hub.model_name if s.hub else None,
                "sessions": len(s.hub.sessions) if s.hub else 0,
                "encoders": s.pool.stats()["encoders"] if s.pool else [],
                "audio": s.omni.audio is not None, "vision": s.omni.vision is not None}

    @app.get("/v1/models")
    async def models(request: Request):
        if (r := denied(request)) is not None:
            return r
        return openai_compat.models_list(server.hub.model_name, server.started)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        if (r := denied(request)) is not None:
            return r
        lim = server.config.limits
        body = await request.body()
        if len(body) > lim.max_message_bytes:
            return api_error(413, "payload_too_large", f"the request has {len(body)} bytes, over the limit of "
                                                       f"{lim.max_message_bytes}")
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            return api_error(400, "invalid_json", "the body is not valid JSON")
        try:
            pieces, result = await openai_compat.chat_completion(server.hub, payload)
            model = server.hub.model_name
            if isinstance(payload, dict) and payload.get("stream"):
                return StreamingResponse(openai_compat.sse_chunks(pieces, result, model), media_type="text/event-stream")
            return await openai_compat.full_completion(pieces, result, model)
        except ProtocolError as e:
            return api_error(503 if e.code == "encoder_unavailable" else 400, e.code, str(e), e.param, e.type)

    @app.websocket("/v1/realtime")
    async def realtime(ws: WebSocket):
        await server.hub.handle(ws)

    app.state.server = server
    from .ui import mount_ui              # last: its mount at / takes what no route above matched
    mount_ui(app, config)
    return app


def serve(config: ServerConfig, host: str = "127.0.0.1", port: int = 7860) -> None:
    """Run the app with uvicorn (blocking)."""
    import uvicorn
    app = create_app(config)
    uvicorn.run(app, host=host, port=port, ws_max_size=2 * config.limits.max_message_bytes, ws="websockets-sansio",
                log_level="warning", ws_per_message_deflate=False)
