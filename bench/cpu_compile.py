"""Does torch.compile pay for CPU decoding? An A/B of compiled pieces of the one-token step.

The speculative benchmark's model (189M parameters, fp32, CPU, 1 thread). Each variant runs in
its own process: prefill 128 tokens, then alternate blocks of 4 decode steps with the compiled
piece on and off (same process, same state, so machine noise hits both arms alike), timing
each step by this thread's CPU time. `none` compiles nothing: its difference is the noise floor.

    python bench/cpu_compile.py [variant ...]     # default: all; about 3-4 minutes on 2 idle cores

Variants: none, ssd_step (kernels.mamba.ssd_step), norms (RMSNorm and gated RMSNorm),
mamba (Mamba2Mixer.forward), moe (MoE.forward), block (Mamba and MoE blocks, norm and residual
included), step (the whole one-token NemotronH.forward, dynamic shapes for the growing KV cache).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(Path(__file__).resolve().parent)]

VARIANTS = ["none", "ssd_step", "norms", "mamba", "moe", "block", "step"]


def patch(variant: str, on: list[bool]) -> None:
    """Route the variant's piece through torch.compile while on[0] is True."""
    import torch

    import engine.model as M
    import kernels.mamba as KM
    import kernels.norm as KN

    def switch(orig, compiled, when=lambda *a, **k: True):
        return lambda *a, **k: compiled(*a, **k) if on[0] and when(*a, **k) else orig(*a, **k)

    one = lambda self, x, *a, **k: x.shape[1] == 1          # noqa: E731  (decode calls only)
    if variant == "ssd_step":
        M.ssd_step = switch(KM.ssd_step, torch.compile(KM.ssd_step, fullgraph=True, dynamic=False))
    elif variant == "norms":
        M.rms_norm = switch(KN.rms_norm, torch.compile(KN.rms_norm, fullgraph=True, dynamic=False),
                            lambda x, *a: x.shape[1] == 1)
        M.gated_rms_norm = switch(KN.gated_rms_norm, torch.compile(KN.gated_rms_norm, fullgraph=True, dynamic=False),
                                  lambda y, *a: y.shape[1] == 1)
    elif variant in ("mamba", "moe", "block"):
        cls = {"mamba": M.Mamba2Mixer, "moe": M.MoE, "block": M.Block}[variant]
        orig = cls.forward
        when = one if variant != "block" else (lambda self, h, *a: h.shape[1] == 1 and self.kind in "ME")
        cls.forward = switch(orig, torch.compile(orig, dynamic=False), when)
    elif variant == "step":
        orig = M.NemotronH.forward.__wrapped__                 # under its inference_mode decorator
        compiled = torch.compile(orig, dynamic=True)

        def forward(self, state, input_ids=None, inputs_embeds=None, logits="last"):
            with torch.inference_mode():
                if on[0] and input_ids is not None and input_ids.shape[1] == 1:
                    return compiled(self, state, input_ids)
                return orig(self, state, input_ids, inputs_embeds, logits)
        M.NemotronH.forward = forward
    elif variant != "none":
        raise SystemExit(f"unknown variant {variant!r}; one of {', '.join(VARIANTS)}")


def measure(variant: str) -> dict:
    import torch
    torch.set_num_threads(1)
    on = [False]
    patch(variant, on)
    from engine.checkpoint import init_random
    from engine.config import DecoderConfig
    from engine.model import NemotronH
    from speculative import CONFIG
    model = init_random(NemotronH(DecoderConfig(**{**CONFIG, "num_nextn_predict_layers": 0})), seed=0)
    model = model.eval().requires_grad_(False)
    state = model.new_state(1)
    ids = torch.randint(3, CONFIG["vocab_size"], (1, 128), generator=torch.Generator().manual_seed(0))
    tok = model(state, input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)

    def steps(n: int) -> float:
        nonlocal tok
        t = time.thread_time()
        for _ in range(n):
            tok = model(state, input_ids=tok).logits[:, -1].argmax(-1, keepdim=True)
        return (time.thread_time() - t) / n * 1e3

    on[0] = True
    t = time.perf_counter()
    steps(2)                                                    # compiles
    compile_s = time.perf_counter() - t
    times = {False: [], True: []}
    for _ in range(8):
        for arm in (False, True):
            on[0] = arm
            times[arm].append(steps(4))
    eager, compiled = statistics.median(times[False]), statistics.median(times[True])
    return dict(variant=variant, compile_s=compile_s, eager=eager, compiled=compiled)


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--_one":
        r = measure(sys.argv[2])
        print(f"{r['variant']} {r['compile_s']:.1f} {r['eager']:.2f} {r['compiled']:.2f}")
        return 0
    variants = sys.argv[1:] or VARIANTS
    print("| compiled piece | compile + 2 steps (s) | eager ms/token | compiled ms/token | change |")
    print("|---|---:|---:|---:|---:|")
    for v in variants:
        out = subprocess.run([sys.executable, __file__, "--_one", v], capture_output=True, text=True)
        if out.returncode:
            print(f"| {v} | failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode} |")
            continue
        _, compile_s, eager, compiled = out.stdout.split()[-4:]
        eager, compiled = float(eager), float(compiled)
        print(f"| {v} | {float(compile_s):.1f} | {eager:.2f} | {compiled:.2f} | {100 * (compiled - eager) / eager:+.1f}% |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
