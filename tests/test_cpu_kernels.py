"""The C++ CPU decode kernels (kernels/cpu/) against the PyTorch paths that define them.

Each kernel on small shapes with the edge cases (sizes that are not a multiple of the vector
width, one and many rows, biases, grouped routing, ragged attention), then whole decoders: a
stream decoded through the kernels equals the same stream on the PyTorch path
(OMNISTREAM_KERNELS=torch), for every layer kind and option the kernels read, in a batch of
ragged rows and from a fork. Also the dispatch rule, the training path (gradients untouched by
the kernels) and the fallback when no compiler is found.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engine.checkpoint import init_random
from engine.config import DecoderConfig
from engine.generate import BatchDecoder, SamplingParams, Session, generate
from engine.model import NemotronH
from engine.state import State
from kernels import attention as ref_attention
from kernels import cpu
from kernels import mamba as ref_mamba
from kernels import moe as ref_moe
from kernels import norm as ref_norm
from kernels import kernels_mode

ROOT = Path(__file__).resolve().parent.parent
REL_TOL = 2e-5     # max abs error relative to the reference's largest magnitude (fp32)


@pytest.fixture(scope="module", autouse=True)
def built():
    """The kernels must build here (CI installs build-essential): no silent skip."""
    assert cpu.ops() is not None, "kernels/cpu did not build (see the RuntimeWarning)"


def reference(fn, *args, **kwargs):
    with kernels_mode("torch"):
        return fn(*args, **kwargs)


def rand(*shape, scale=1.0, gen=None):
    return torch.randn(*shape, generator=gen) * scale


def assert_close(got, want, what="", tol=REL_TOL):
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = (got.double() - want.double()).abs().max().item()
    scale = max(want.abs().max().item(), 1e-6)
    assert err <= tol * scale, f"{what}: max abs error {err:.3g} (reference max {scale:.3g})"


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


# ---- products -------------------------------------------------------------------------------
@pytest.mark.parametrize("rows", [1, 2, 3, 5, 8, 9, 16])
@pytest.mark.parametrize("out_f,in_f", [(37, 19), (200, 64), (48, 130)])
def test_linear(rows, out_f, in_f, gen):
    x, w, b = rand(rows, in_f, gen=gen), rand(out_f, in_f, gen=gen), rand(out_f, gen=gen)
    assert_close(cpu.linear(x, w), F.linear(x, w), "no bias")
    assert_close(cpu.linear(x, w, b), F.linear(x, w, b), "bias")
    assert_close(cpu.linear(x, w, b, cpu.RELU2), F.relu(F.linear(x, w, b)).square(), "relu2")
    x3 = rand(rows, 3, in_f + 5, gen=gen)[:, 1, 2:2 + in_f]          # rows not contiguous in memory
    assert_close(cpu.linear(x3, w), F.linear(x3, w), "strided rows")


def test_linear_dispatch_keeps_shapes(gen):
    from kernels.linear import linear
    x, w, b = rand(2, 3, 24, gen=gen), rand(40, 24, gen=gen), rand(40, gen=gen)
    got = linear(x, w, b)
    assert got.shape == (2, 3, 40)
    assert_close(got, F.linear(x, w, b))


# ---- norms, Mamba ---------------------------------------------------------------------------
@pytest.mark.parametrize("H", [32, 50])
def test_add_rms_norm(H, gen):
    x, r, w = rand(3, H, gen=gen), rand(3, H, gen=gen), rand(H, gen=gen)
    h, y = cpu.add_rms_norm(x, r, w, 1e-5)
    assert_close(h, x + r, "sum")
    assert_close(y, reference(ref_norm.rms_norm, x + r, w, 1e-5), "norm")
    h, y = cpu.add_rms_norm(x, None, w, 1e-5)
    assert torch.equal(h, x)
    assert_close(y, reference(ref_norm.rms_norm, x, w, 1e-5), "norm without residual")


MAMBA_CASES = {   # b, heads, head_dim, state, groups, conv bias, projection biases, dt limits
    "plain": (1, 4, 8, 16, 2, True, False, (0.0, math.inf)),
    "batch-one-group-biases": (3, 4, 8, 24, 1, False, True, (0.0, math.inf)),
    "dt-limits": (2, 8, 4, 16, 4, True, False, (0.05, 0.3)),
}


@pytest.mark.parametrize("case", list(MAMBA_CASES))
def test_mamba_step_equals_the_pytorch_mixer(case, gen):
    """Mamba2Mixer.step (one kernel call) against its forward at T = 1, states included."""
    from engine.model import Mamba2Mixer
    b, h, p, n, g, conv_bias, proj_bias, limits = MAMBA_CASES[case]
    cfg = DecoderConfig(vocab_size=8, hidden_size=24, pattern="M", mamba_num_heads=h, mamba_head_dim=p, ssm_state_size=n,
                        n_groups=g, use_conv_bias=conv_bias, mamba_proj_bias=proj_bias, time_step_limit=limits)
    mixer = Mamba2Mixer(cfg).requires_grad_(False)
    for t in mixer.parameters():
        t.copy_(rand(*t.shape, scale=0.5, gen=gen))
    state = State.empty("M", cfg, batch=b)
    state.conv[0].copy_(rand(*state.conv[0].shape, gen=gen))
    state.ssm[0].copy_(rand(*state.ssm[0].shape, gen=gen))
    x = rand(b, 24, gen=gen)
    ref = State.stack([state.row(r) for r in range(b)])            # a copy of the states
    with kernels_mode("torch"):
        want = mixer(x[:, None], ref, 0)[:, 0]
    got = mixer.step(x, state, 0)
    assert_close(got, want, "y")
    assert_close(state.conv[0], ref.conv[0], "conv state")
    assert_close(state.ssm[0], ref.ssm[0], "ssm state")


# ---- MoE ------------------------------------------------------------------------------------
@pytest.mark.parametrize("N,E,k,n_group,topk_group,normalize", [
    (1, 16, 4, 1, 1, True), (9, 16, 4, 4, 2, True), (5, 12, 3, 1, 1, False), (3, 32, 6, 8, 3, True)])
def test_route(N, E, k, n_group, topk_group, normalize, gen):
    logits, bias = rand(N, E, scale=2.0, gen=gen), rand(E, scale=0.1, gen=gen)
    want_ids, want_w = reference(ref_moe.route, logits, bias, k, n_group, topk_group, normalize, 2.5)
    got_ids, got_w = cpu.route(logits, bias, k, n_group, topk_group, normalize, 2.5)
    assert torch.equal(got_ids, want_ids)
    assert_close(got_w, want_w, "weights")


@pytest.mark.parametrize("case", ["one-token", "batch", "one-expert-for-all"])
def test_grouped_experts(case, gen):
    E, d, inner, k = 8, 40, 36, 2
    N = {"one-token": 1, "batch": 11, "one-expert-for-all": 16}[case]
    x, logits = rand(N, d, gen=gen), rand(N, E, gen=gen)
    if case == "one-expert-for-all":
        logits[:, 3] += 100.0
    ids, w = reference(ref_moe.route, logits, torch.zeros(E), k, 1, 1, True, 1.0)
    up = [rand(inner, d, scale=d ** -0.5, gen=gen) for _ in range(E)]
    down = [rand(d, inner, scale=inner ** -0.5, gen=gen) for _ in range(E)]
    want = reference(ref_moe.grouped_experts, x, ids, w, up, down)
    assert_close(cpu.grouped_experts(x, ids, w, up, down), want, "experts")


# ---- attention ------------------------------------------------------------------------------
@pytest.mark.parametrize("H,Hkv,D,lengths", [(8, 2, 64, [150]), (4, 4, 16, [5, 9, 1]), (6, 2, 24, [7, 7])])
def test_decode_attention(H, Hkv, D, lengths, gen):
    b, cap = len(lengths), max(lengths) + 6
    q = rand(b, H, 1, D, gen=gen)
    K, V = rand(b, Hkv, cap, D, gen=gen), rand(b, Hkv, cap, D, gen=gen)
    keys, values = K[:, :, :max(lengths)], V[:, :, :max(lengths)]     # views of a larger cache
    offsets = [n - 1 for n in lengths]
    want = reference(ref_attention.causal_attention, q, keys, values, offsets)
    assert_close(cpu.decode_attention(q, keys, values, lengths), want, "attention")
    assert_close(ref_attention.causal_attention(q, keys, values, offsets), want, "dispatched")


# ---- threads ----------------------------------------------------------------------------------
def test_threads_split_the_work_without_changing_results(gen):
    """Above a few hundred KB the loops run on all threads: the same bits as on one."""
    x, w = rand(3, 512, gen=gen), rand(700, 512, gen=gen)                  # 1.4 MB of weights
    b, h, p, n, g, H = 2, 16, 32, 64, 4, 64                                # 1 MB of SSM state
    d_inner = h * p
    c = d_inner + 2 * g * n
    xm, conv, ssm = rand(b, H, gen=gen), rand(b, c, 3, gen=gen), rand(b, h, p, n, gen=gen)
    in_w, out_w = rand(d_inner + c + h, H, scale=0.1, gen=gen), rand(H, d_inner, scale=0.1, gen=gen)
    q, K, V = rand(2, 8, 1, 64, gen=gen), rand(2, 2, 600, 64, gen=gen), rand(2, 2, 600, 64, gen=gen)

    gen1 = lambda: torch.Generator().manual_seed(5)                        # noqa: E731

    def run():
        cs, st = conv.clone(), ssm.clone()
        y = cpu.mamba_step(xm, in_w, None, cs, st, rand(c, 1, 4, gen=gen1()), None, torch.ones(h), torch.zeros(h),
                           torch.ones(h), torch.ones(d_inner), out_w, None, g, 1e-5, 0.0, math.inf)
        return (cpu.linear(x, w), y, st,
                cpu.decode_attention(q, K, V, [600, 333]))

    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
        assert cpu.parallel_threads(8) == 1
        torch.set_num_threads(2)
        two = run()
        # the loops do go parallel (a build without OpenMP ran them all on one thread)
        assert cpu.parallel_threads(8) == 2 and cpu.parallel_threads(1) == 1
    finally:
        torch.set_num_threads(saved)
    for a, b_ in zip(one, two):
        assert torch.equal(a, b_)
    assert_close(one[0], F.linear(x, w), "linear")


@pytest.mark.parametrize("b,Hkv,R,L,D", [(1, 2, 80, 9000, 64), (2, 3, 7, 100, 32), (1, 1, 96, 4097, 16),
                                         (1, 2, 1, 1, 16), (2, 1, 33, 4096, 48)])
def test_prefix_attention(b, Hkv, R, L, D, gen):
    """A few query rows over all-visible keys (strided cache views, several key splits), with the
    log-sum-exp the segments are merged by; scale D ** -0.5."""
    q = rand(b, Hkv, R, D, gen=gen)
    k, v = rand(b, Hkv, L + 3, D, gen=gen)[:, :, :L], rand(b, Hkv, L + 3, D, gen=gen)[:, :, :L]
    out, lse = cpu.prefix_attention(q, k, v)
    scores = q @ k.transpose(-1, -2) / math.sqrt(D)
    assert_close(out, torch.softmax(scores, -1) @ v, "prefix attention")
    assert_close(lse, torch.logsumexp(scores, -1), "log-sum-exp")
    with pytest.raises(RuntimeError, match="1..96 rows"):
        cpu.prefix_attention(rand(1, 1, 97, 16, gen=gen), k[:1, :1, :, :16], v[:1, :1, :, :16])


# ---- whole decoders -------------------------------------------------------------------------
BASE = dict(vocab_size=96, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            mamba_num_heads=4, mamba_head_dim=8, ssm_state_size=16, n_groups=2, chunk_size=16, n_routed_experts=8,
            num_experts_per_tok=2, moe_intermediate_size=32, moe_shared_expert_intermediate_size=48,
            routed_scaling_factor=2.5, intermediate_size=40)
MODELS = {
    "plain": dict(pattern="MEM*E-"),
    "biases": dict(pattern="M*E-M", mamba_proj_bias=True, attention_bias=True, mlp_bias=True),
    "latent-grouped": dict(pattern="MEM*E", moe_latent_size=24, n_group=4, topk_group=2),
    "dt-limits-no-conv-bias": dict(pattern="MM*E", time_step_limit=(0.01, 0.5), use_conv_bias=False, n_groups=1),
}


def make_model(name: str) -> NemotronH:
    model = init_random(NemotronH(DecoderConfig(**{**BASE, **MODELS[name]})), seed=0, std=0.15)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("bias") or "correction_bias" in pname:      # init_random leaves them 0
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval().requires_grad_(False)


def stream_logits(model: NemotronH) -> list[torch.Tensor]:
    """Prefill, decode, a batch of rows of different lengths, a fork and its continuation."""
    ids = torch.randint(3, 96, (3, 24), generator=torch.Generator().manual_seed(2))
    out = []
    st = model.new_state(1)
    out.append(model(st, input_ids=ids[:1, :9]).logits)
    for t in range(9, 15):
        out.append(model(st, input_ids=ids[:1, t:t + 1]).logits)
    rows = []
    for r, n in enumerate((5, 11, 8)):
        s = model.new_state(1)
        model(s, input_ids=ids[r:r + 1, :n])
        rows.append(s)
    batch = State.stack(rows)
    for t in range(4):
        out.append(model(batch, input_ids=ids[:, 15 + t:16 + t]).logits)
    fork = st.fork()                                  # attention over a shared, read-only prefix
    for t in range(3):
        out.append(model(fork, input_ids=ids[:1, 20 + t:21 + t]).logits)
    question = st.fork()                              # a few tokens at once over it (prefix_attention)
    out.append(model(question, input_ids=ids[:1, 18:24], logits="all").logits)
    return out


@pytest.mark.parametrize("name", list(MODELS))
def test_decoder_on_the_kernels_equals_the_pytorch_path(name):
    model = make_model(name)
    with kernels_mode("torch"):
        want = stream_logits(model)
    got = stream_logits(model)
    for i, (g, w) in enumerate(zip(got, want)):
        assert_close(g, w, f"{name}: call {i} logits", tol=5e-5)
    assert max(w.abs().max().item() for w in want) > 0.1               # not a vanishing signal


def test_generation_on_the_kernels_equals_the_pytorch_path():
    model = make_model("plain")
    prompt = torch.randint(3, 96, (12,), generator=torch.Generator().manual_seed(3)).tolist()

    def run():
        s = Session(model)
        s.prefill(prompt)
        single = list(generate(s, SamplingParams(max_new_tokens=12)))
        bd, sessions = BatchDecoder(model), []
        for n in (4, 9):
            t = Session(model)
            t.prefill(prompt[:n])
            bd.join(t, SamplingParams(max_new_tokens=6))
            sessions.append(t)
        got = {id(t): [] for t in sessions}
        while len(bd):
            for t, tok in bd.step():
                got[id(t)].append(tok)
        return single, [got[id(t)] for t in sessions]

    with kernels_mode("torch"):
        want = run()
    assert run() == want


def test_training_path_is_unchanged():
    """Under autograd the kernels step aside: the same gradients as the PyTorch path, at T = 1 too."""
    model = make_model("plain").requires_grad_(True)
    forward = NemotronH.forward.__wrapped__          # what training calls (no inference_mode)
    ids = torch.randint(3, 96, (1, 6), generator=torch.Generator().manual_seed(4))

    def grads():
        model.zero_grad()
        loss = forward(model, model.new_state(1), input_ids=ids[:, :1], logits="all").logits.square().mean()
        loss = loss + forward(model, model.new_state(2), input_ids=ids.view(2, 3), logits="all").logits.square().mean()
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    with kernels_mode("torch"):
        want = grads()
    got = grads()
    assert got.keys() == want.keys() and len(got) > 20
    for n in want:
        assert_close(got[n], want[n], n, tol=1e-5)


def test_dispatch_rule(monkeypatch):
    x = torch.zeros(2)
    monkeypatch.delenv("OMNISTREAM_KERNELS", raising=False)
    assert cpu.enabled(x)
    assert not cpu.enabled(x.to(torch.bfloat16))                  # fp32 only
    assert not cpu.enabled(torch.zeros(2, requires_grad=True))     # no backward in the kernels
    with torch.no_grad():
        assert cpu.enabled(torch.zeros(2, requires_grad=True))
    for mode in ("torch", "triton"):
        monkeypatch.setenv("OMNISTREAM_KERNELS", mode)
        assert not cpu.enabled(x)
    monkeypatch.setenv("OMNISTREAM_KERNELS", "nope")
    with pytest.raises(ValueError, match="OMNISTREAM_KERNELS"):
        cpu.enabled(x)


def test_without_a_compiler_decoding_falls_back_with_a_warning(tmp_path):
    """No compiler: a RuntimeWarning says why, and decoding runs (and agrees) on the PyTorch path."""
    code = f"""
import sys, warnings
sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'tests')!r}]
import torch
import kernels.cpu as cpu
cpu.CACHE = __import__('pathlib').Path({str(tmp_path)!r})       # no library built there yet
from test_cpu_kernels import make_model
model = make_model("plain")
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    st = model.new_state(1)
    model(st, input_ids=torch.tensor([[5, 6, 7]]))
    logits = model(st, input_ids=torch.tensor([[8]])).logits
assert cpu.ops() is None
msgs = [str(x.message) for x in w if issubclass(x.category, RuntimeWarning)]
assert any("CPU decode kernels unavailable" in m and "compiler" in m for m in msgs), msgs
print(float(logits.abs().max()))
"""
    env = {**os.environ, "CXX": str(tmp_path / "no-such-compiler")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert float(r.stdout.strip().splitlines()[-1]) > 0.1


def test_a_compiler_without_openmp_builds_serial_kernels_with_a_warning(tmp_path):
    """-fopenmp refused (clang without libomp): the library is built without it, says so, and its
    loops run on one thread."""
    cxx = tmp_path / "cxx-without-openmp"
    cxx.write_text('#!/bin/sh\nfor a in "$@"; do [ "$a" = -fopenmp ] && { echo "unsupported: -fopenmp" >&2; exit 1; }; done\n'
                   'exec g++ "$@"\n')
    cxx.chmod(0o755)
    code = f"""
import sys, warnings
sys.path[:0] = [{str(ROOT)!r}]
import torch
import kernels.cpu as cpu
cpu.CACHE = __import__('pathlib').Path({str(tmp_path / 'cache')!r})
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    assert cpu.ops() is not None
assert any("run on one thread" in str(x.message) for x in w), [str(x.message) for x in w]
torch.set_num_threads(2)
print(cpu.parallel_threads(8))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "CXX": str(cxx)}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "1"
