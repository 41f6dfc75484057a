"""The command line: `python -m app generate --model DIR --prompt TEXT ...`.

`generate` loads a checkpoint folder (config.json, safetensors weights, tokenizer.json), builds
the chat prompt (or takes the prompt as the whole input with `--raw`), and prints the answer as
it streams. With `--json` the last line is one JSON object with `prompt_ids`, `output_ids` and
`text`. Without `--model` it uses the bundled default model in assets/.
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
    return p


def generate_command(args) -> int:
    import torch
    from tqdm import tqdm

    from engine.generate import SamplingParams, Session, generate
    from engine.loader import load_decoder
    from engine.tokenizer import (THINK_END, ReasoningBudget, StreamDecoder, Tokenizer, build_chat_prompt,
                                  validate_template_tokens)

    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.model.is_dir():
        raise ValueError(f"--model {args.model}: not a folder (a checkpoint folder holds config.json, "
                         "model.safetensors and tokenizer.json)")
    reasoning = not args.no_think
    tok = Tokenizer.from_dir(args.model)
    if args.raw:
        text = args.prompt
    else:
        validate_template_tokens(tok, reasoning)
        messages = ([{"role": "system", "content": args.system}] if args.system else [])
        text = build_chat_prompt(messages + [{"role": "user", "content": args.prompt}], reasoning=reasoning)
    prompt_ids = tok.encode(text)
    if not prompt_ids:
        raise ValueError("the prompt is empty")

    t0 = time.perf_counter()
    model = load_decoder(args.model, dtype=getattr(torch, args.dtype) if args.dtype else None,
                         mtp=bool(args.speculative))
    load_s = time.perf_counter() - t0
    greedy = args.greedy or args.temperature == 0 or args.speculative
    params = SamplingParams(
        max_new_tokens=args.max_new_tokens,
        temperature=0.0 if greedy else (args.temperature if args.temperature is not None else (0.6 if reasoning else 0.2)),
        top_k=args.top_k,
        top_p=args.top_p if args.top_p is not None else (0.95 if reasoning and not greedy else 1.0),
        stop_ids=tuple(tok.eos_ids), seed=args.seed)

    session = Session(model, speculative=bool(args.speculative))
    session.check_room(len(prompt_ids))
    t1 = time.perf_counter()
    # Long prompts are prefilled in pieces (the same result as one pass) behind a progress bar.
    piece = 1024
    with tqdm(total=len(prompt_ids), unit="tok", desc="prefill", file=sys.stderr,
              disable=len(prompt_ids) <= 4 * piece) as bar:
        for i in range(0, len(prompt_ids), piece):
            session.prefill(prompt_ids[i:i + piece])
            bar.update(len(prompt_ids[i:i + piece]))
    prefill_s = time.perf_counter() - t1
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
    stats = {"load_s": round(load_s, 3), "prefill_s": round(prefill_s, 3), "decode_s": round(decode_s, 3),
             "prompt_tokens": len(prompt_ids), "output_tokens": len(out_ids),
             "decode_tokens_per_s": round(len(out_ids) / decode_s, 2) if decode_s > 0 else None,
             "session_memory_bytes": session.memory_bytes()}
    if args.speculative:
        stats["speculative"] = {"draft_tokens": args.speculative, "acceptance_rate": round(session.spec.acceptance_rate, 4),
                                "steps": session.spec.steps}
    if args.json:
        print(json.dumps({"prompt_ids": prompt_ids, "output_ids": out_ids, "text": text_out, "stats": stats}))
    else:
        print(f"[{stats['prompt_tokens']} prompt tokens in {prefill_s:.2f}s, {len(out_ids)} tokens at "
              f"{stats['decode_tokens_per_s']} tok/s]", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command is None:
        # Until the UI lands, the main job demonstrates the bundled model on the command line.
        args = _parser().parse_args(["generate", "--prompt", "Hello! What can you do?", "--max-new-tokens", "48"])
    try:
        return generate_command(args)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
