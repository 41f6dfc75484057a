"""The command line: `python -m app generate --model DIR --prompt TEXT ...`.

`generate` loads a checkpoint folder (config.json, safetensors weights, tokenizer.json), decodes
and encodes any `--image`, `--video`, `--audio` files, builds the chat prompt (or takes the prompt
as the whole input with `--raw`, its `<image>`/`<video>`/`<so_embedding>` placeholders naming the
media), and prints the answer as it streams. With `--json` the last line is one JSON object with
`prompt_ids` (after expansion and EVS), `output_ids`, `text` and `token_counts` per modality.
Without `--model` it uses the bundled default model in assets/.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "assets" / "default-model"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m app", description="omnistream: streaming Nemotron Omni inference")
    sub = p.add_subparsers(dest="command")
    g = sub.add_parser("generate", help="answer one prompt, streaming the text")
    g.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="checkpoint folder (default: the bundled model)")
    g.add_argument("--prompt", required=True, help="the user message (or the whole input with --raw)")
    g.add_argument("--system", default="", help="system message")
    g.add_argument("--max-new-tokens", type=int, default=256)
    g.add_argument("--greedy", action="store_true", help="greedy decoding (the same as --temperature 0)")
    g.add_argument("--temperature", type=float, default=None, help="default 0.6 with reasoning, 0.2 without")
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=None, help="default 0.95 with reasoning, 1.0 without")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--no-think", action="store_true", help="reasoning off: the prompt ends with <think></think>")
    g.add_argument("--reasoning-budget", type=int, default=None, help="close the <think> span after this many tokens")
    g.add_argument("--raw", action="store_true", help="the prompt text is the whole model input (no chat template)")
    g.add_argument("--speculative", type=int, default=0, metavar="K",
                   help="draft K tokens a step with the checkpoint's MTP head (greedy only)")
    g.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="compute dtype (default: the checkpoint's)")
    g.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    g.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    m = g.add_argument_group("media (placed before the prompt text; with --raw, at its <image>, <video>, "
                             "<so_embedding> placeholders, in order)")
    m.add_argument("--image", type=Path, action="append", default=[], help="an image file (repeatable)")
    m.add_argument("--video", type=Path, action="append", default=[], help="a video file (repeatable)")
    m.add_argument("--audio", type=Path, action="append", default=[], help="an audio file (repeatable)")
    m.add_argument("--video-audio", action="store_true", help="also feed each video's audio track, after the video")
    m.add_argument("--fps", type=float, default=None, help="sample videos at this rate (default 2; 1 in the stream layout)")
    m.add_argument("--num-frames", type=int, default=None, help="sample N frames evenly spaced instead of --fps")
    m.add_argument("--max-frames", type=int, default=None,
                   help="at most this many frames a video (default 128; 512 in the stream layout)")
    m.add_argument("--evs", type=float, default=None, metavar="RATE",
                   help="Efficient Video Sampling pruning rate in [0, 1) (default: the checkpoint's)")
    m.add_argument("--layout", choices=["reference", "stream"], default=None,
                   help="reference: media placeholders before the prompt, as the released processor builds them; "
                        "stream: each --video / --audio file read as a live session reads it (chunks in time "
                        "order with their time labels, a narrating model's caption after each), then the prompt. "
                        "Default: stream for a narrating model (the bundled one), else reference")
    from app.evaluate import eval_arguments
    sub.add_parser("eval", parents=[eval_arguments()], help="accuracy and grounding on MMOU-format items")
    _add_service_commands(sub)
    return p


def _media_embeddings(args, omni, text: str | None):
    """Decode and encode every medium of the command line, in prompt order.

    Without --raw the prompt gets one placeholder line per medium (images, then each video with
    its audio track if asked, then audio files); with --raw, `text` names them in its own order.
    Returns (media, placeholder_lines).
    """
    from fusion.prompt import PLACEHOLDERS, placeholder_kinds

    if not (args.image or args.video or args.audio):
        if args.raw and placeholder_kinds(text):
            raise ValueError(f"the prompt names media ({', '.join(PLACEHOLDERS[k] for k in placeholder_kinds(text))}) "
                             "but no --image, --video or --audio was given")
        return [], ""
    from encoders.media import load_audio, load_image, sample_video

    if args.fps is not None and args.num_frames is not None:
        raise ValueError("give --fps or --num-frames, not both")
    queues = {"image": [], "video": [], "audio": []}
    for path in args.image:
        queues["image"].append(lambda path=path: omni.embed_image(load_image(path)))
    for path in args.video:
        def video(path=path):
            clip = sample_video(path, fps=None if args.num_frames else (args.fps or 2.0),
                                num_frames=args.num_frames, max_frames=args.max_frames or 128)
            return omni.embed_video(clip.frames, clip.indices, clip.avg_fps, evs_rate=args.evs)
        queues["video"].append(video)
        if args.video_audio:
            queues["audio"].append(lambda path=path: omni.embed_audio(load_audio(path)))
    for path in args.audio:
        queues["audio"].append(lambda path=path: omni.embed_audio(load_audio(path)))
    if args.raw:
        kinds = placeholder_kinds(text)
    else:
        kinds = ["image"] * len(args.image)
        for _ in args.video:
            kinds += ["video"] + (["audio"] if args.video_audio else [])
        kinds += ["audio"] * len(args.audio)
    given = {k: len(q) for k, q in queues.items()}
    named = {k: kinds.count(k) for k in queues}
    if given != named:
        raise ValueError(f"the prompt names {named} media but the command line gives {given}: with --raw, write one "
                         + ", ".join(PLACEHOLDERS.values()) + " per medium")
    media = [queues[k].pop(0)() for k in kinds]
    return media, "".join(PLACEHOLDERS[k] + "\n" for k in kinds)


def _stream_prefill(args, omni, session, reasoning: bool) -> tuple[list[int], dict[str, int]]:
    """The stream layout into `session`: the chat header, each file's chunks in time order (each
    followed by a narrating model's caption of it), then the prompt as a question. Returns the
    input's ids (placeholders at media positions) and its token counts."""
    import torch
    from tqdm import tqdm

    from fusion.prompt import question_tail, stream_header
    from app.evaluate import MAX_FRAMES, VIDEO_FPS, media_chunks
    from fusion.stream import NARRATION_BATCH

    if args.image or args.raw or args.video_audio or args.num_frames is not None:
        raise ValueError("--layout stream reads --video and --audio files as a session does (a video with its "
                         "audio track); it takes no --image, --raw, --video-audio or --num-frames")
    if not (args.video or args.audio):
        raise ValueError("--layout stream needs a --video or --audio file")
    tok = omni.tokenizer
    ids = tok.encode(stream_header(args.system))
    counts = {"text": 0, "image": 0, "video": 0, "audio": 0}
    with torch.inference_mode():
        session.prefill(ids)
        for path in args.video + args.audio:
            chunks = media_chunks(omni, path, fps=args.fps or VIDEO_FPS, evs_rate=args.evs,
                                  max_frames=args.max_frames or MAX_FRAMES)
            with tqdm(total=len(chunks), unit="chunk", desc=f"read {Path(path).name}", file=sys.stderr,
                      disable=len(chunks) < 20) as bar:
                for first in range(0, len(chunks), NARRATION_BATCH):     # captions are written a batch at a time
                    part = chunks[first:first + NARRATION_BATCH]
                    for c, (read, _) in zip(part, omni.read_chunks(session, part)):
                        ids += read
                        counts[c.modality] += c.num_tokens
                    bar.update(len(part))
        tail = tok.encode(question_tail(args.prompt, reasoning))
        session.check_room(len(tail) + 1)
        session.prefill(tail)
    ids += tail
    counts["text"] = len(ids) - counts["video"] - counts["audio"]
    return ids, counts


def generate_command(args) -> int:
    import torch
    from tqdm import tqdm

    from engine.generate import SamplingParams, Session, generate
    from fusion.omni import OmniModel
    from engine.tokenizer import (THINK_END, ReasoningBudget, StreamDecoder, Tokenizer, build_chat_prompt,
                                  validate_template_tokens)

    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.model.is_dir():
        raise ValueError(f"--model {args.model}: not a folder (a checkpoint folder holds config.json, "
                         "model.safetensors and tokenizer.json)")
    reasoning = not args.no_think
    tok = Tokenizer.from_dir(args.model)
    if not args.raw:
        validate_template_tokens(tok, reasoning)        # before any weight is loaded
    t0 = time.perf_counter()
    omni = OmniModel.load(args.model, dtype=getattr(torch, args.dtype) if args.dtype else None,
                          mtp=bool(args.speculative), tokenizer=tok)
    model = omni.decoder
    load_s = time.perf_counter() - t0
    layout = args.layout or ("stream" if omni.settings.narration is not None and (args.video or args.audio)
                             and not args.raw else "reference")
    session = Session(model, speculative=bool(args.speculative))
    t_media = time.perf_counter()
    if layout == "stream":
        prompt_ids, token_counts = _stream_prefill(args, omni, session, reasoning)
        media_s = time.perf_counter() - t_media
        prefill_s = 0.0                  # included in media_s: chunks are encoded and prefilled in turn
    else:
        media, placeholders = _media_embeddings(args, omni, args.prompt if args.raw else None)
        media_s = time.perf_counter() - t_media
        if args.raw:
            text = args.prompt
        else:
            messages = ([{"role": "system", "content": args.system}] if args.system else [])
            text = build_chat_prompt(messages + [{"role": "user", "content": placeholders + args.prompt}],
                                     reasoning=reasoning)
        inp = omni.prepare(text, media)
        prompt_ids, token_counts = inp.ids, inp.token_counts()
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        embeds = omni.input_embeds(inp)
        session.check_room(len(prompt_ids))
        t1 = time.perf_counter()
        # Long prompts are prefilled in pieces (the same result as one pass) behind a progress bar.
        piece = 1024
        with tqdm(total=len(prompt_ids), unit="tok", desc="prefill", file=sys.stderr,
                  disable=len(prompt_ids) <= 4 * piece) as bar:
            for i in range(0, len(prompt_ids), piece):
                session.prefill(embeds=embeds[i:i + piece])
                bar.update(len(prompt_ids[i:i + piece]))
        prefill_s = time.perf_counter() - t1
    greedy = args.greedy or args.temperature == 0 or args.speculative
    params = SamplingParams(
        max_new_tokens=args.max_new_tokens,
        temperature=0.0 if greedy else (args.temperature if args.temperature is not None else (0.6 if reasoning else 0.2)),
        top_k=args.top_k,
        top_p=args.top_p if args.top_p is not None else (0.95 if reasoning and not greedy else 1.0),
        stop_ids=tuple(tok.eos_ids), seed=args.seed)
    budget = None
    if args.reasoning_budget is not None and reasoning and not args.raw:
        end = tok.token_id(THINK_END)
        close = tok.encode("\n") + [end]
        budget = ReasoningBudget(args.reasoning_budget, end, close)

    out_ids: list[int] = []
    stream = StreamDecoder(tok)
    echo = not args.json or sys.stdout.isatty()
    t2 = time.perf_counter()
    while len(out_ids) < params.max_new_tokens:
        remaining = SamplingParams(**{**params.__dict__, "max_new_tokens": params.max_new_tokens - len(out_ids)})
        forced = None
        for t in generate(session, remaining, speculative=args.speculative):
            out_ids.append(t)
            piece = stream.feed(t)
            if echo and piece:
                print(piece, end="", flush=True)
            forced = budget.step(t) if budget and t not in params.stop_ids else None
            if forced:
                break
        if not forced:
            break
        # close the reasoning span: append the forced ids to the stream, then keep generating
        forced = forced[: params.max_new_tokens - len(out_ids)]
        session.prefill(forced)
        for t in forced:
            out_ids.append(t)
            piece = stream.feed(t)
            if echo and piece:
                print(piece, end="", flush=True)
    tail = stream.flush()
    if echo:
        print(tail, flush=True)
    decode_s = time.perf_counter() - t2
    text_out = tok.decode(out_ids)
    stats = {"load_s": round(load_s, 3), "media_s": round(media_s, 3), "prefill_s": round(prefill_s, 3), "decode_s": round(decode_s, 3),
             "prompt_tokens": len(prompt_ids), "output_tokens": len(out_ids),
             "decode_tokens_per_s": round(len(out_ids) / decode_s, 2) if decode_s > 0 else None,
             "session_memory_bytes": session.memory_bytes()}
    if args.speculative:
        stats["speculative"] = {"draft_tokens": args.speculative, "acceptance_rate": round(session.spec.acceptance_rate, 4),
                                "steps": session.spec.steps}
    if args.json:
        print(json.dumps({"prompt_ids": prompt_ids, "output_ids": out_ids, "text": text_out,
                          "token_counts": token_counts, "layout": layout, "stats": stats}))
    else:
        read = (f"read and prefilled chunk by chunk in {media_s:.2f}s" if layout == "stream"
                else f"in {prefill_s:.2f}s")
        print(f"[{stats['prompt_tokens']} prompt tokens {read}, {len(out_ids)} tokens at "
              f"{stats['decode_tokens_per_s']} tok/s]", file=sys.stderr)
    return 0


def _server_options(p: argparse.ArgumentParser, port: int = 7860) -> None:
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="checkpoint folder (default: the bundled model)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=port, help=f"port of the API and the UI (default {port})")
    p.add_argument("--api-key", default=None, help="require this key (default: $OMNISTREAM_API_KEY; none on 127.0.0.1)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    p.add_argument("--vad", choices=["auto", "silero", "energy"], default="auto", help="server VAD (default: silero if installed)")
    p.add_argument("--clip-seconds", type=float, default=2.0, help="live audio is encoded in clips this long (default 2)")
    p.add_argument("--max-sessions", type=int, default=32)
    p.add_argument("--max-session-seconds", type=float, default=4 * 3600.0)
    p.add_argument("--max-message-mb", type=float, default=16.0, help="largest client message (default 16 MB)")
    p.add_argument("--max-file-mb", type=float, default=12.0, help="largest uploaded image/audio/video (default 12 MB)")
    p.add_argument("--rate-limit", type=float, default=200.0, help="client events per second per session (default 200)")
    p.add_argument("--idle-timeout", type=float, default=600.0, help="seconds without a client event (default 600)")
    p.add_argument("--resume-grace", type=float, default=60.0, help="seconds a dropped session waits for its client")


def _add_service_commands(sub) -> None:
    s = sub.add_parser("serve", help="the API and the UI with encoders in-process (the default command)")
    _server_options(s)
    d = sub.add_parser("decoder", help="the API and the decoder; encoders connect to its embedding link")
    _server_options(d)
    d.add_argument("--link-host", default="127.0.0.1", help="address of the embedding link (default 127.0.0.1)")
    d.add_argument("--link-port", type=int, default=7861, help="port of the embedding link (default 7861)")
    e = sub.add_parser("encoder", help="an encoder service feeding a decoder's embedding link")
    e.add_argument("--connect", required=True, metavar="URL", help="the decoder's link, e.g. ws://127.0.0.1:7861")
    e.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="checkpoint folder (its towers are used)")
    e.add_argument("--name", default=None, help="this encoder's name (default: host-pid); a restart keeps its sessions")
    e.add_argument("--api-key", default=None, help="the decoder's key (default: $OMNISTREAM_API_KEY)")
    e.add_argument("--clip-seconds", type=float, default=2.0)
    e.add_argument("--threads", type=int, default=None)
    e.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)


def _server_config(args, in_process: bool):
    import os
    from app.realtime import Limits
    from app.server import ServerConfig
    if not args.model.is_dir():
        raise ValueError(f"--model {args.model}: not a folder (a checkpoint folder holds config.json, "
                         "model.safetensors and tokenizer.json)")
    key = args.api_key or os.environ.get("OMNISTREAM_API_KEY") or None
    if not key and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {args.host} without an API key: anyone who reaches it can use it "
              "(set --api-key or OMNISTREAM_API_KEY)", file=sys.stderr)
    limits = Limits(max_sessions=args.max_sessions, max_session_s=args.max_session_seconds,
                    max_message_bytes=int(args.max_message_mb * (1 << 20)), max_file_bytes=int(args.max_file_mb * (1 << 20)),
                    rate_per_s=args.rate_limit, rate_burst=int(2 * args.rate_limit), idle_timeout_s=args.idle_timeout,
                    resume_grace_s=args.resume_grace)
    return ServerConfig(model_dir=args.model, api_key=key, limits=limits, in_process_encoder=in_process,
                        link_host=getattr(args, "link_host", "127.0.0.1"),
                        link_port=getattr(args, "link_port", None), vad=args.vad, clip_s=args.clip_seconds,
                        threads=args.threads, dtype=args.dtype)


def serve_command(args, in_process: bool = True) -> int:
    from app.server import serve
    config = _server_config(args, in_process)
    if args.model.resolve() == DEFAULT_MODEL.resolve():
        from app.ui import default_model_note
        print(f"note: {default_model_note(args.model)}", file=sys.stderr)
    where = f"http://{args.host}:{args.port}"
    print(f"omnistream: UI {where}/  realtime ws://{args.host}:{args.port}/v1/realtime  "
          f"chat {where}/v1/chat/completions" + (f"  embedding link ws://{config.link_host}:{config.link_port}"
                                                 if config.link_port else ""), file=sys.stderr)
    serve(config, args.host, args.port)
    return 0


def encoder_command(args) -> int:
    import asyncio
    import os
    import socket

    import torch

    from app.encoder_service import EncoderService, run_encoder_client
    from fusion.omni import OmniModel
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.model.is_dir():
        raise ValueError(f"--model {args.model}: not a folder")
    if not args.connect.startswith(("ws://", "wss://")):
        raise ValueError(f"--connect {args.connect}: expected a ws:// or wss:// URL")
    omni = OmniModel.load(args.model, dtype=getattr(torch, args.dtype) if args.dtype else None)
    if omni.audio is None and omni.vision is None:
        print("note: this checkpoint has no encoder towers (text-only): the encoder will refuse media", file=sys.stderr)
    service = EncoderService.from_omni(omni, clip_s=args.clip_seconds)
    omni.decoder = None          # the encoder service needs the towers only
    name = args.name or f"{socket.gethostname()}-{os.getpid()}"
    key = args.api_key or os.environ.get("OMNISTREAM_API_KEY") or None
    log = lambda m: print(m, file=sys.stderr, flush=True)
    try:
        asyncio.run(run_encoder_client(args.connect, service, name, key, log=log))
    except KeyboardInterrupt:
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["serve"] + argv          # `python -m app [--model DIR] [--port N] ...`: the server
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return serve_command(args)
        if args.command == "decoder":
            return serve_command(args, in_process=False)
        if args.command == "encoder":
            return encoder_command(args)
        if args.command == "eval":
            from app.evaluate import eval_command
            return eval_command(args)
        return generate_command(args)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
