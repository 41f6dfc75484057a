"""The service's parts without a server: link framing, the encoder pool's backpressure, the
engine loop's batched answers, the VAD."""

from __future__ import annotations

import asyncio
import dataclasses
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from app.engine_loop import EngineLoop, ResponseRequest
from app.link import (Control, EncoderPool, LinkError, LinkLimits, Media, PoolError, pack, queue_link, unpack)
from app.vad import EnergyVAD, TurnDetector, make_scorer, silero_model_path
from engine.generate import SamplingParams, Session, generate
from engine.loader import load_decoder
from engine.tokenizer import Tokenizer
from fusion.prompt import question_tail, stream_header
from fusion.stream import EmbeddingChunk, Narration, Narrator, chunk_input, narrate

DEFAULT = "assets/default-model"


# ---- link framing ----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_chunk_round_trip_is_bit_exact(dtype):
    emb = torch.randn(7, 48).to(dtype)
    c = EmbeddingChunk("sess_1", "video", 1.5, 2.5, "Frame 1 sampled at 1.50 seconds: ", emb, seq=3)
    back = unpack(pack(c))
    assert isinstance(back, EmbeddingChunk)
    assert (back.session, back.modality, back.t0, back.t1, back.label, back.seq) == \
        ("sess_1", "video", 1.5, 2.5, "Frame 1 sampled at 1.50 seconds: ", 3)
    assert back.embeds.dtype == dtype and torch.equal(back.embeds.view(torch.uint8), emb.view(torch.uint8))


def test_media_and_control_round_trip():
    m = unpack(pack(Media("s", "frame", b"\xff\xd8\xffabc", {"t_ms": 1200})))
    assert (m.session, m.kind, m.data, m.meta) == ("s", "frame", b"\xff\xd8\xffabc", {"t_ms": 1200})
    c = unpack(pack(Control("s", "flush", {"token": "resp_1"})))
    assert (c.session, c.type, c.data) == ("s", "flush", {"token": "resp_1"})


def _chunk_frame(header: dict, payload: bytes) -> bytes:
    import json
    h = json.dumps(header).encode()
    return struct.pack("<BI", 1, len(h)) + h + payload


GOOD = {"session": "s", "modality": "audio", "t0": 0.0, "t1": 1.0, "label": "", "seq": 0, "dtype": "float32",
        "shape": [2, 4]}


@pytest.mark.parametrize("change, payload, words", [
    ({"shape": [3, 4]}, 32, "needs 48 bytes"),
    ({"shape": [2, -4]}, 32, "non-negative"),
    ({"shape": [1 << 30, 1 << 20]}, 0, "exceeds the limits"),
    ({"dtype": "int64"}, 32, "not one of"),
    ({"modality": "smell"}, 32, "modality"),
    ({"t0": 2.0}, 32, "t0 <= t1"),
    ({"session": 5}, 32, "'session' must be str"),
    ({"label": "x" * 5000}, 32, "over the limit"),
])
def test_bad_chunk_frames_are_refused_with_the_reason(change, payload, words):
    with pytest.raises(LinkError, match=words):
        unpack(_chunk_frame({**GOOD, **change}, bytes(payload)))


def test_frame_size_limits_are_checked_before_parsing():
    with pytest.raises(LinkError, match="over the limit"):
        unpack(b"\x01" + b"\x00" * 100, LinkLimits(max_frame_bytes=64))
    with pytest.raises(LinkError, match="header length"):
        unpack(struct.pack("<BI", 1, 1 << 30) + b"{}")
    with pytest.raises(LinkError, match="unknown kind"):
        unpack(struct.pack("<BI", 9, 2) + b"{}")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200) | st.builds(lambda k, h, p: struct.pack("<BI", k, len(h)) + h + p,
                                           st.integers(0, 4), st.binary(max_size=80), st.binary(max_size=40)))
def test_random_link_frames_never_crash_the_parser(data):
    try:
        unpack(data)
    except LinkError:
        pass


# ---- the encoder pool ------------------------------------------------------------------------------

class _Recorder:
    def __init__(self):
        self.events = []

    async def encoder_event(self, msg):
        self.events.append(msg)


class _Engine:   # the pool only needs append(); the real engine is tested below
    def __init__(self):
        self.got = []

    async def append(self, sid, chunk):
        self.got.append(chunk)


def test_pool_drops_the_oldest_frame_and_refuses_audio_over_the_backlog():
    async def main():
        pool = EncoderPool(_Engine(), max_frames=3, max_audio_s=1.0)
        dec, enc = queue_link(4)
        await enc.send(Control("", "hello", {"name": "e1"}))
        serve = asyncio.create_task(pool.serve(dec))
        await asyncio.wait_for(pool.connected.wait(), 5)
        sink = _Recorder()
        pool.open("s", {}, sink)
        # the encoder reads nothing: the queue to it fills, then the session's feed holds the rest
        dropped = sum(pool.submit("s", Media("s", "frame", b"\xff\xd8\xff", {"t_ms": i})) for i in range(20))
        await asyncio.sleep(0.05)
        sent = []
        while not enc.inbox.empty():
            sent.append(await enc.recv())
        frames = [m for m in sent if isinstance(m, Media)]
        # open + what the link queue took, then the newest 3 still waiting; everything else dropped
        assert isinstance(sent[0], Control) and sent[0].type == "open"
        waiting = list(pool.feeds["s"].queue)
        assert dropped == 20 - len(frames) - len(waiting) and len(waiting) <= 3
        assert [m.meta["t_ms"] for m in waiting] == list(range(20 - len(waiting), 20))
        pool.submit("s", Media("s", "audio", b"\x00" * 4 * 12000))
        with pytest.raises(PoolError) as e:
            pool.submit("s", Media("s", "audio", b"\x00" * 4 * 8000))
        assert e.value.code == "input_audio_buffer_overflow"
        # the encoder vanishing tells the session, with the loss counted
        await enc.close()
        await asyncio.wait_for(serve, 5)
        assert sink.events[-1].type == "error" and sink.events[-1].data["code"] == "encoder_unavailable"
        with pytest.raises(PoolError) as e:
            pool.submit("s", Media("s", "frame", b"\xff\xd8\xff", {"t_ms": 0}))
        assert e.value.code == "encoder_unavailable"
    asyncio.run(main())


# ---- the engine loop -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model():
    return load_decoder(DEFAULT), Tokenizer.from_dir(DEFAULT)


def test_batched_answers_equal_one_at_a_time_greedy_and_state_is_freed(model):
    dec, tok = model
    chunk = EmbeddingChunk("s1", "audio", 0.0, 2.0, "", torch.randn(5, dec.cfg.hidden_size) * 0.5)

    async def main():
        e = EngineLoop(dec, tok, image_token_id=18, audio_token_id=27)
        await e.start()
        errors = []
        base = await e.stats()
        await e.open_session("s1", stream_header("be brief"), lambda c, m: errors.append(c))
        await e.append("s1", chunk)
        await e.append("s1", "streamed text ")
        handles = [await e.respond(ResponseRequest(f"r{i}", "s1", question_tail(f"question {i}?"),
                                                   SamplingParams(max_new_tokens=12 + i))) for i in range(3)]
        outs = [[t async for t in h] for h in handles]
        stats = await e.stats()
        await e.close_session("s1")
        after = await e.stats()
        await e.stop()
        return errors, handles, outs, base, stats, after

    errors, handles, outs, base, stats, after = asyncio.run(main())
    assert not errors
    ref = Session(dec)
    ref.prefill(tok.encode(stream_header("be brief")))
    ref.prefill(embeds=chunk_input(chunk, tok, dec.embed, 27))
    ref.prefill(tok.encode("streamed text "))
    for i, (h, out) in enumerate(zip(handles, outs)):
        f = ref.fork()
        f.prefill(tok.encode(question_tail(f"question {i}?")))
        want = list(generate(f, SamplingParams(max_new_tokens=12 + i, stop_ids=tuple(tok.eos_ids))))
        assert out == want
        assert h.status in ("completed", "incomplete") and h.output_tokens == len(out)
        assert h.input_tokens == f.length - len(want)
    assert stats["sessions"] == 1 and stats["state_bytes"] > 0
    assert after["sessions"] == 0 and after["state_bytes"] == base["state_bytes"] == 0


NARRATION = Narration({"audio": "(heard: ", "video": "(seen: "}, ")", 6)


@pytest.mark.parametrize("seed", range(4))
def test_narrate_appends_the_greedy_caption_as_its_own_tokens(model, seed):
    """The caption is the model's greedy continuation of the opening, cut at the close; the session
    gets exactly the caption's tokens; a modality the model does not narrate adds nothing."""
    dec, tok = model
    g = torch.Generator().manual_seed(seed)
    chunk = EmbeddingChunk("s", "audio", 0.0, 2.0, "", torch.randn(5, dec.cfg.hidden_size, generator=g) * 0.5)
    with torch.inference_mode():
        s = Session(dec)
        s.prefill(embeds=chunk_input(chunk, tok, dec.embed, 27))
        before = s.fork()
        caption = narrate(s, chunk, tok, NARRATION)
        assert caption.startswith("(heard:") and caption.endswith(") ") and "\n" not in caption
        f = before.fork()
        f.prefill(tok.encode("(heard:"))          # the opening's space belongs to the first word's token
        greedy = tok.decode([t for t in generate(f, SamplingParams(max_new_tokens=6, temperature=0.0,
                                                                   stop_ids=tuple(tok.eos_ids))) if t not in tok.eos_ids])
        assert caption == ("(heard:" + greedy).split(")")[0].split("\n")[0].rstrip() + ") "
        before.prefill(tok.encode(caption))
        assert s.length == before.length
        torch.testing.assert_close(s.logits, before.logits, atol=1e-5, rtol=1e-5)
        image = EmbeddingChunk("s", "image", 0.0, 0.0, "", torch.randn(4, dec.cfg.hidden_size))
        assert narrate(s, image, tok, NARRATION) == "" and s.length == before.length



def test_captions_written_together_equal_captions_written_one_at_a_time(model):
    """Captions that read their chunk alone are decoded in batches (Narrator.captions): chunks of
    different lengths and modalities, one the model does not narrate, give the same captions as
    each written alone, and as narrate() writes after the chunk read alone."""
    dec, tok = model
    narrator = Narrator(dec, tok, dataclasses.replace(NARRATION, context="chunk"))
    g = torch.Generator().manual_seed(3)
    kinds = [("video", 3), ("audio", 5), ("image", 4), ("audio", 2), ("video", 6)] * 4      # 20: over one batch
    chunks = [EmbeddingChunk("s", m, k, k + 1.0, f"{m} {k}: ", torch.randn(n, dec.cfg.hidden_size, generator=g), k)
              for k, (m, n) in enumerate(kinds)]
    with torch.inference_mode():
        xs = [chunk_input(c, tok, dec.embed, 27 if c.modality == "audio" else 18) for c in chunks]
        together = narrator.captions(chunks, xs)
        alone = [narrator.captions([c], [x])[0] for c, x in zip(chunks, xs)]
        header = Session(dec)
        header.prefill(tok.encode(stream_header()))
        reference = []
        for c, x in zip(chunks, xs):
            reader = header.fork()
            reader.prefill(embeds=x)
            reference.append(narrate(Session(dec), c, tok, NARRATION, reader) if c.modality != "image" else "")
    assert together == alone == reference
    assert [c == "" for c in together] == [m == "image" for m, _ in kinds]
    assert len(set(together)) > 2
    assert Narrator(dec, tok, NARRATION).captions(chunks, xs) is None      # context "session": one at a time

def test_narration_config_is_checked():
    assert Narration.from_dict(None) is None
    n = Narration.from_dict({"prefix": {"audio": "(heard: "}, "close": ")", "max_new_tokens": 8})
    assert n.caption("audio", ["a bell", "a tone"]) == "(heard: a bell; a tone) " and n.caption("audio", []) == "(heard: nothing) "
    assert n.context == "session" and Narration.from_dict({"prefix": {"audio": "x"}, "context": "chunk"}).context == "chunk"
    keyed = Narration.from_dict({"prefix": {"audio": "(heard from second {second}: ", "video": "(seen: "}})
    assert keyed.opening("audio", 26.4) == "(heard from second 26: " and keyed.opening("audio", 2.6) == "(heard from second 3: "
    assert keyed.caption("audio", ["a bell 27.0-27.6"], 26.0) == "(heard from second 26: a bell 27.0-27.6) "
    assert keyed.caption("video", [], 4.0) == "(seen: nothing) "
    assert keyed.things("(heard from second 26: a bell 27.0-27.6; a tone 27.9-28.0) ", "audio") == [
        "a bell 27.0-27.6", "a tone 27.9-28.0"]
    assert keyed.things("(heard from second 4: nothing) ", "audio") == [] == n.things("(heard: nothing) ", "audio")
    with pytest.raises(ValueError, match="not a audio caption"):
        keyed.things("(heard: a bell) ", "audio")
    for bad in ({"prefix": {"smell": "(sniffed: "}}, {"prefix": {}}, {"prefix": {"audio": "x"}, "max_new_tokens": 0},
                {"prefix": {"audio": "x"}, "close": ""}, {"prefix": {"audio": "x"}, "context": "clip"}, "yes",
                {"prefix": {"audio": "(heard at {t}: "}}, {"prefix": {"audio": "{second} {second}"}}):
        with pytest.raises(ValueError, match="stream_narration"):
            Narration.from_dict(bad, "cfg.json")


@pytest.mark.parametrize("context", ["session", "chunk"])
def test_a_narrating_engine_captions_each_chunk_before_answering(model, context):
    """Each chunk is followed by the model's caption, written from the session so far or, with
    context "chunk", from the chunk read alone after the plain stream header (the session's own
    header here has instructions); the answer reads the captions."""
    dec, tok = model
    narration = dataclasses.replace(NARRATION, context=context)
    g = torch.Generator().manual_seed(1)
    chunks = [EmbeddingChunk("s", m, t, t + 2.0, f"{m} {t}: ", torch.randn(4, dec.cfg.hidden_size, generator=g) * 0.5, k)
              for k, (m, t) in enumerate([("video", 0.0), ("audio", 0.0), ("video", 2.0)])]

    async def main():
        e = EngineLoop(dec, tok, image_token_id=18, audio_token_id=27, narration=narration)
        await e.start()
        await e.open_session("s", stream_header("be brief"), print)
        for c in chunks:
            await e.append("s", c)
        h = await e.respond(ResponseRequest("r", "s", question_tail("what?"), SamplingParams(max_new_tokens=8)))
        out = [t async for t in h]
        stats = await e.stats()
        await e.stop()
        return out, stats

    out, stats = asyncio.run(main())
    ref = Session(dec)
    with torch.inference_mode():
        ref.prefill(tok.encode(stream_header("be brief")))
        captions = []
        for c in chunks:
            x = chunk_input(c, tok, dec.embed, 18 if c.modality == "video" else 27)
            ref.prefill(embeds=x)
            alone = None
            if context == "chunk":
                alone = Session(dec)
                alone.prefill(tok.encode(stream_header()))
                alone.prefill(embeds=x)
            captions.append(narrate(ref, c, tok, narration, alone))
        ref.prefill(tok.encode(question_tail("what?")))
        assert out == list(generate(ref, SamplingParams(max_new_tokens=8, stop_ids=tuple(tok.eos_ids))))
    assert [c[3] for c in stats["captions"]["s"]] == captions
    assert captions[0].startswith("(seen:") and captions[1].startswith("(heard:")



def test_captions_go_out_as_the_chunks_are_read(model, monkeypatch):
    """An idle engine sends events out every IDLE_FLUSH_S while it reads a queued upload: with no
    time between flushes, each chunk's caption is delivered before the next chunk is read (not the
    whole upload's captions in one burst at the end)."""
    from app import engine_loop
    monkeypatch.setattr(engine_loop, "IDLE_FLUSH_S", 0.0)
    dec, tok = model
    g = torch.Generator().manual_seed(2)
    chunks = [EmbeddingChunk("s", "audio", t, t + 2.0, f"audio {t}: ", torch.randn(4, dec.cfg.hidden_size, generator=g), k)
              for k, t in enumerate([0.0, 2.0, 4.0, 6.0])]

    async def main():
        e = EngineLoop(dec, tok, image_token_id=18, audio_token_id=27, narration=NARRATION)
        read_when_delivered = []
        await e.start()
        await e.open_session("s", stream_header(), print, lambda c, text: read_when_delivered.append(e.prefilled_chunks))
        for c in chunks:                       # all queued before the engine reads the first
            await e.append("s", c)
        await e.stats()
        await e.stop()
        return read_when_delivered

    assert asyncio.run(main()) == [1, 2, 3, 4]

def test_cancel_and_reasoning_budget(model):
    dec, tok = model

    async def main():
        e = EngineLoop(dec, tok, image_token_id=18, audio_token_id=27)
        await e.start()
        await e.open_session("s", stream_header(), print)
        long = await e.respond(ResponseRequest("a", "s", question_tail("go"), SamplingParams(max_new_tokens=200)))
        budget = await e.respond(ResponseRequest("b", "s", question_tail("go"), SamplingParams(max_new_tokens=30),
                                                 reasoning_budget=3))
        first = await long.__anext__()
        await e.cancel("a")
        rest = [t async for t in long]
        out_b = [t async for t in budget]
        missing = await e.respond(ResponseRequest("c", "nope", question_tail("go"), SamplingParams(max_new_tokens=5)))
        out_c = [t async for t in missing]
        await e.stop()
        return long, 1 + len(rest), budget, out_b, missing, out_c

    long, n_long, budget, out_b, missing, out_c = asyncio.run(main())
    assert long.status == "cancelled" and long.reason == "client_cancelled" and n_long < 200
    end = tok.token_id("</think>")
    assert end in out_b[:6], "the reasoning budget closes <think> after 3 tokens"
    assert out_b[3:5] == tok.encode("\n") + [end] or out_b.index(end) < 3
    assert missing.status == "failed" and missing.reason == "session_not_found" and out_c == []


def test_guided_choice_answers_with_the_likeliest_choice_after_the_reasoning(model):
    """With `choices`, the reasoning is decoded as usual up to `</think>` (here closed by the
    reasoning budget), then the answer is the choice the model gives the highest likelihood from
    there (app.evaluate.best_choice), written out and ended; with reasoning off it is chosen at
    once; a token limit that cuts the choice leaves the answer incomplete."""
    from app.evaluate import best_choice, choice_ids

    dec, tok = model
    choices = ("a red star", "the word CAT", "a falling sweep")
    q = "What is seen first?"

    async def main():
        e = EngineLoop(dec, tok, image_token_id=18, audio_token_id=27)
        await e.start()
        await e.open_session("s", stream_header(), print)
        await e.append("s", "(seen: a red star 0.0-3.0) (heard: a falling sweep 1.0-1.5) ")
        got = []
        for rid, tail, budget, limit in (("think", question_tail(q), 4, 64), ("direct", question_tail(q, False), None, 64),
                                         ("cut", question_tail(q), 4, 8)):
            h = await e.respond(ResponseRequest(rid, "s", tail, SamplingParams(max_new_tokens=limit),
                                                reasoning_budget=budget, choices=choices))
            got.append((h, [t async for t in h]))
        spent = got[0][1].index(tok.token_id("</think>")) + 1      # a limit the reasoning uses up
        h = await e.respond(ResponseRequest("full", "s", question_tail(q), SamplingParams(max_new_tokens=spent),
                                            reasoning_budget=4, choices=choices))
        got.append((h, [t async for t in h]))
        first = got[0][1][0]                  # a turn that ends inside its reasoning: the first token stops it
        h = await e.respond(ResponseRequest("ended", "s", question_tail(q),
                                            SamplingParams(max_new_tokens=64, stop_ids=(first,)), choices=choices))
        got.append((h, [t async for t in h]))
        await e.stop()
        return got

    (think, out), (direct, out_direct), (cut, out_cut), (full, out_full), (ended, out_ended) = asyncio.run(main())
    end = tok.token_id("</think>")
    ref = Session(dec)
    ref.prefill(tok.encode(stream_header() + "(seen: a red star 0.0-3.0) (heard: a falling sweep 1.0-1.5) "))
    k = out.index(end)
    f = ref.fork()
    f.prefill(tok.encode(question_tail(q)) + out[:k + 1])
    assert k <= 6 and out[k + 1:] == choice_ids(tok, best_choice(f, tok, list(choices)))
    assert think.status == "completed" and tok.decode(out[k + 1:-1]).strip() in choices
    f = ref.fork()
    f.prefill(tok.encode(question_tail(q, False)))
    assert out_direct == choice_ids(tok, best_choice(f, tok, list(choices))) and direct.status == "completed"
    assert len(out_cut) == 8 and out_cut[:k + 1] == out[:k + 1] and out_cut == out[:8]
    assert cut.status == "incomplete" and cut.reason == "max_output_tokens"
    assert out_full == out[:k + 1]
    assert full.status == "incomplete" and full.reason == "max_output_tokens"
    f = ref.fork()                            # closed for it, then the choice, as eval --guided-choice does
    f.prefill(tok.encode(question_tail(q)) + [out[0], end])
    assert out_ended == [out[0], end] + choice_ids(tok, best_choice(f, tok, list(choices)))
    assert ended.status == "completed"


# ---- VAD ---------------------------------------------------------------------------------------------

def test_turn_detector_events_on_the_stream_clock():
    vad = TurnDetector(EnergyVAD(-30.0), threshold=0.5, prefix_padding_ms=100, silence_duration_ms=320)
    sr = 16000
    silence = torch.zeros(sr)
    tone = 0.3 * torch.sin(2 * torch.pi * 300 * torch.arange(sr) / sr)
    events = []
    for piece in (silence, tone, silence):
        for k in range(0, sr, 1000):                 # fed in uneven pieces
            events += vad.feed(piece[k:k + 1000])
    assert [e.type for e in events] == ["speech_started", "speech_stopped"]
    assert abs(events[0].ms - (1000 - 100)) <= 32        # speech at 1.0 s, minus the prefix padding
    assert abs(events[1].ms - 2000) <= 32                 # silence from 2.0 s, stopped 320 ms later


@pytest.mark.skipif(silero_model_path() is None, reason="silero-vad is not installed")
def test_silero_scores_noise_low_and_keeps_state():
    s = make_scorer("silero")
    assert s.kind == "silero"
    rng = np.random.default_rng(0)
    scores = [s.score(torch.from_numpy((0.001 * rng.standard_normal(512)).astype(np.float32))) for _ in range(20)]
    assert all(0.0 <= p < 0.5 for p in scores)
    assert s.state.shape == (2, 1, 128) and np.abs(s.state).sum() > 0
