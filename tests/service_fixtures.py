"""Fixtures of the service tests: checkpoints, a server on a free 127.0.0.1 port, a small client.

`build_scripted_checkpoint` writes a text NemotronH whose greedy answer is known in advance:
every mixer's output projection is zero, so the last hidden state is norm_f(embed(token)) and
the model is a bigram model; the output head is built so each token of `script` is followed by
the next, starting after `first_after` and ending with <|im_end|>. It is a real checkpoint run by
the real engine, only with chosen weights.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import torch

from engine.checkpoint import init_random, save_decoder
from engine.config import DecoderConfig
from engine.model import NemotronH
from engine.tokenizer import Tokenizer, train_tokenizer

SMALL = dict(vocab_size=300, hidden_size=64, pattern="M*E", num_attention_heads=2, num_key_value_heads=1, head_dim=32,
             intermediate_size=96, mamba_num_heads=4, mamba_head_dim=16, ssm_state_size=16, n_groups=2, chunk_size=16,
             n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
             moe_shared_expert_intermediate_size=48, routed_scaling_factor=2.5, max_position_embeddings=4096,
             eos_token_ids=(2, 11))


@torch.no_grad()
def build_scripted_checkpoint(path: Path, script: str, first_after: str = "\n", seed: int = 0) -> list[int]:
    """Write the bigram checkpoint (and tokenizer) to `path`; returns the script's token ids."""
    path = Path(path)
    train_tokenizer(path, vocab_size=SMALL["vocab_size"])
    tok = Tokenizer.from_dir(path)
    chain = tok.encode(first_after)[-1:] + tok.encode(script) + [tok.token_id("<|im_end|>")]
    assert len(set(chain)) == len(chain), f"script tokens must be distinct: {chain}"
    cfg = DecoderConfig(**SMALL)
    model = init_random(NemotronH(cfg), seed)
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith(("out_proj.weight", "o_proj.weight", "down_proj.weight")):
            p.zero_()
    model.backbone.embeddings.weight.copy_(torch.randn(model.backbone.embeddings.weight.shape, generator=g))
    model.backbone.norm_f.weight.fill_(1.0)
    emb = model.backbone.embeddings.weight
    unit = emb / emb.pow(2).mean(-1, keepdim=True).sqrt()
    head = torch.zeros_like(model.lm_head.weight)
    for a, b in zip(chain, chain[1:]):
        head[b] += 10.0 * unit[a] / cfg.hidden_size
    model.lm_head.weight.copy_(head)
    save_decoder(model, path)
    return chain[1:-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningServer:
    """A uvicorn server for `app` in a thread with its own event loop (stopped by `stop()`)."""

    def __init__(self, app, port: int | None = None):
        import uvicorn
        self.app, self.port = app, port or free_port()
        self.config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", ws="websockets-sansio",
                                     ws_per_message_deflate=False, ws_max_size=64 << 20, lifespan="on")
        self.server = uvicorn.Server(self.config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        t0 = time.time()
        while not self.server.started:
            if not self.thread.is_alive() or time.time() - t0 > 120:
                raise RuntimeError("server did not start")
            time.sleep(0.05)

    def _run(self):
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.serve())

    @property
    def state(self):
        return self.app.state.server

    def call(self, coro, timeout: float = 30):
        """Run a coroutine on the server's loop (e.g. engine.stats())."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(30)


def pcm16(seconds: float, rate: int = 24000, freq: float = 220.0, seed: int = 0) -> bytes:
    """A tone with a little noise as PCM16 mono."""
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    x = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)
    return (x * 32767).astype("<i2").tobytes()


async def events_until(ws, kind: str, timeout: float = 60.0, sink: list | None = None) -> dict:
    """Read events until one of type `kind`; the ones before go to `sink`."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no {kind} event within {timeout} s (saw {[e['type'] for e in sink or []]})")
        e = json.loads(await asyncio.wait_for(ws.recv(), left))
        if sink is not None:
            sink.append(e)
        if e["type"] == kind:
            return e
