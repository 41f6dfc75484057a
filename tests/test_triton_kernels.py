"""The Triton kernels (kernels/triton/) against their PyTorch references (kernels/).

Without a GPU every kernel runs in Triton's interpreter on CPU tensors (kernels.triton.launch
picks it for CPU tensors, whatever was imported first), in fp32 and fp16, on tiny shapes
including the edge cases: one token, one expert hit by every token, sequences that are not a
multiple of the chunk, ragged batches. With a GPU the same tests run compiled, on CUDA, in bf16
too. Each kernel is also compiled for an H100/H200 (sm_90) at the model's real sizes, so a
kernel that only the interpreter accepts cannot pass. Finally the whole decoder runs through
the kernels (OMNISTREAM_KERNELS=triton) and must equal the PyTorch path.
"""

from __future__ import annotations


import pytest
import torch

pytest.importorskip("triton")
pytestmark = pytest.mark.filterwarnings("ignore:TRITON_DEFAULT_FP_FUSION")

import kernels.triton as tk
from kernels import attention as ref_attention
from kernels import evs as ref_evs
from kernels import mamba as ref_mamba
from kernels import moe as ref_moe
from kernels import norm as ref_norm
from kernels.triton import attention, conv, evs, moe, norm, ssd
from kernels import kernels_mode

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
# Max abs error allowed, relative to the reference's largest magnitude.
REL_TOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def reference(fn, *args, **kwargs):
    """The PyTorch path of a kernels/ function, whatever the device."""
    with kernels_mode("torch"):
        return fn(*args, **kwargs)


def rand(*shape, dtype=torch.float32, scale=1.0, gen=None):
    return (torch.randn(*shape, generator=gen) * scale).to(dtype).to(DEVICE)


def assert_close(got, want, dtype, what=""):
    got, want = got.double().cpu(), want.double().cpu()
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = (got - want).abs().max().item() if want.numel() else 0.0
    scale = max(want.abs().max().item(), 1e-6) if want.numel() else 1.0
    assert err <= REL_TOL[dtype] * scale, f"{what}: max abs error {err:.3g} (reference max {scale:.3g})"


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


@pytest.fixture(autouse=True)
def exact_fp32_references():
    """On CUDA, PyTorch's fp32 convolutions may use TF32; the references must not."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


# ---- norms ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 32), (3, 5, 48)])
def test_rms_norm(dtype, shape, gen):
    x = rand(*shape, dtype=dtype, gen=gen)
    w = rand(shape[-1], gen=gen) + 1
    got = norm.rms_norm(x, w, 1e-5)
    assert got.dtype == dtype
    assert_close(got, reference(ref_norm.rms_norm, x, w, 1e-5), dtype, "rms_norm")


@pytest.mark.parametrize("dtype", DTYPES)
def test_gated_rms_norm_on_split_views(dtype, gen):
    proj = rand(2, 7, 3 * 64, dtype=dtype, gen=gen)
    z, y = proj[..., :64], proj[..., 64:128]            # strided views, as the mixer passes them
    w = rand(64, gen=gen) + 1
    got = norm.gated_rms_norm(y, z, w, 16, 1e-5)
    assert got.dtype == torch.float32
    assert_close(got, reference(ref_norm.gated_rms_norm, y, z, w, 16, 1e-5), dtype, "gated_rms_norm")


# ---- causal conv1d --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("L", [1, 2, 37])
def test_causal_conv1d(dtype, L, gen):
    b, c, K = 2, 40, 4
    x = rand(b, L, c + 8, dtype=dtype, gen=gen)[..., :c]   # row stride wider than c
    w = rand(c, 1, K, dtype=dtype, gen=gen)
    bias = rand(c, dtype=dtype, gen=gen)
    state = rand(b, c, K - 1, dtype=dtype, gen=gen)
    want, want_state = reference(ref_mamba.causal_conv1d, x.float(), state.float(), w.float(), bias.float())
    got, got_state = conv.causal_conv1d(x, state.clone(), w, bias)
    assert_close(got, want, dtype, "conv out")
    assert_close(got_state, want_state, dtype, "conv state")


def test_causal_conv1d_stream_in_pieces_equals_one_pass(gen):
    b, L, c, K = 1, 23, 24, 4
    x, w = rand(b, L, c, gen=gen), rand(c, 1, K, gen=gen)
    state = torch.zeros(b, c, K - 1, device=DEVICE)
    whole, _ = conv.causal_conv1d(x, state.clone(), w, None)
    pieces, s = [], state.clone()
    for a, z in [(0, 2), (2, 3), (3, 11), (11, 23)]:
        y, s = conv.causal_conv1d(x[:, a:z], s, w, None)
        pieces.append(y)
    assert_close(torch.cat(pieces, 1), whole, torch.float32, "conv pieces")


# ---- Mamba2 SSD -----------------------------------------------------------------------------
def ssd_inputs(b, L, h, p, g, n, dtype, gen):
    x = rand(b, L, h, p, dtype=dtype, gen=gen)
    dt = (torch.rand(b, L, h, generator=gen) * 0.3 + 0.02).to(DEVICE)
    A = -(torch.rand(h, generator=gen) * 4 + 0.5).to(DEVICE)
    B, C = rand(b, L, g, n, dtype=dtype, gen=gen), rand(b, L, g, n, dtype=dtype, gen=gen)
    D = (torch.rand(h, generator=gen) + 0.5).to(DEVICE)
    return x, dt, A, B, C, D


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("L", [1, 16, 37])          # one token, one whole chunk, a ragged last chunk
def test_ssd_chunked_equals_recurrence(dtype, L, gen):
    b, h, p, g, n = 2, 4, 8, 2, 16
    x, dt, A, B, C, D = ssd_inputs(b, L, h, p, g, n, dtype, gen)
    state = rand(b, h, p, n, gen=gen)
    want_y, want_s = ref_mamba.ssd_sequential(*(t.double() for t in (x, dt, A, B, C, D, state)))
    got_y, got_s = ssd.ssd_chunked(x, dt, A, B, C, D, state, chunk_size=16)
    assert got_y.dtype == got_s.dtype == torch.float32
    assert_close(got_y, want_y, dtype, "ssd y")
    assert_close(got_s, want_s, dtype, "ssd state")


def test_ssd_chunked_without_initial_state_and_chunk_checks(gen):
    x, dt, A, B, C, D = ssd_inputs(1, 70, 2, 16, 1, 32, torch.float32, gen)
    want_y, want_s = ref_mamba.ssd_sequential(*(t.double() for t in (x, dt, A, B, C, D)))
    got_y, got_s = ssd.ssd_chunked(x, dt, A, B, C, D, None, chunk_size=32)
    assert_close(got_y, want_y, torch.float32, "ssd y")
    assert_close(got_s, want_s, torch.float32, "ssd state")
    with pytest.raises(ValueError, match="chunk_size"):
        ssd.ssd_chunked(x, dt, A, B, C, D, None, chunk_size=24)


@pytest.mark.parametrize("dtype", DTYPES)
def test_ssd_step_in_place(dtype, gen):
    b, h, p, g, n = 3, 4, 8, 2, 16
    x, dt, A, B, C, D = ssd_inputs(b, 1, h, p, g, n, dtype, gen)
    state = rand(b, h, p, n, gen=gen)
    want_state = state.clone()
    want = reference(ref_mamba.ssd_step, want_state, x[:, 0].float(), dt[:, 0], A, B[:, 0].float(), C[:, 0].float(), D)
    got_state = state.clone()
    got = ssd.ssd_step(got_state, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D)
    assert_close(got, want, dtype, "step y")
    assert_close(got_state, want_state, dtype, "step state")


# ---- MoE ------------------------------------------------------------------------------------
@pytest.mark.parametrize("N,E,k,n_group,topk_group,normalize", [
    (1, 16, 4, 1, 1, True),       # one token
    (9, 16, 4, 4, 2, True),       # grouped routing
    (5, 12, 3, 1, 1, False),      # expert count not a power of two, no normalization
])
def test_route(N, E, k, n_group, topk_group, normalize, gen):
    logits = rand(N, E, gen=gen, scale=2.0)
    bias = rand(E, gen=gen, scale=0.1)
    want_ids, want_w = reference(ref_moe.route, logits, bias, k, n_group, topk_group, normalize, 2.5)
    got_ids, got_w = moe.route(logits, bias, k, n_group, topk_group, normalize, 2.5)
    assert torch.equal(got_ids.cpu(), want_ids.cpu())
    assert_close(got_w, want_w, torch.float32, "route weights")


def expert_weights(E, d, inner, dtype, gen):
    up = [rand(inner, d, dtype=dtype, gen=gen, scale=d ** -0.5) for _ in range(E)]
    down = [rand(d, inner, dtype=dtype, gen=gen, scale=inner ** -0.5) for _ in range(E)]
    return up, down


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["one-token", "ragged", "one-expert-for-all"])
def test_grouped_experts(dtype, case, gen):
    E, d, inner, k = 8, 48, 40, 2
    N = {"one-token": 1, "ragged": 21, "one-expert-for-all": 19}[case]
    x = rand(N, d, dtype=dtype, gen=gen)
    logits = rand(N, E, gen=gen)
    if case == "one-expert-for-all":
        logits[:, 3] += 100.0                            # expert 3 is every token's first choice
    ids, w = reference(ref_moe.route, logits, torch.zeros(E, device=DEVICE), k, 1, 1, True, 1.0)
    up, down = expert_weights(E, d, inner, dtype, gen)
    want = reference(ref_moe.grouped_experts, x.float(), ids, w, [u.float() for u in up], [v.float() for v in down])
    got = moe.grouped_experts(x, ids, w, up, down)
    assert got.dtype == torch.float32
    assert_close(got, want, dtype, "experts")


def test_grouped_experts_rejects_mixed_weights(gen):
    up, down = expert_weights(2, 16, 16, torch.float32, gen)
    up[1] = up[1].t()                                    # not contiguous
    with pytest.raises(ValueError, match="contiguous"):
        moe.grouped_experts(rand(1, 16, gen=gen), torch.tensor([[0, 1]], device=DEVICE),
                            torch.ones(1, 2, device=DEVICE), up, down)


# ---- attention ------------------------------------------------------------------------------
def kv_cache(b, Hkv, Lk, D, dtype, gen, capacity=None):
    """Keys/values as the model passes them: the first Lk positions of a larger cache."""
    cap = capacity or Lk + 7
    K, V = rand(b, Hkv, cap, D, dtype=dtype, gen=gen), rand(b, Hkv, cap, D, dtype=dtype, gen=gen)
    return K[:, :, :Lk], V[:, :, :Lk]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,offset", [(37, 0), (5, 70)])   # a first prefill; a piece after 70 tokens
def test_prefill_attention(dtype, T, offset, gen):
    b, H, Hkv, D = 1, 4, 2, 16
    q = rand(b, T, H, D, dtype=dtype, gen=gen).transpose(1, 2)      # (b, H, T, D) view, as the model's
    keys, values = kv_cache(b, Hkv, offset + T, D, dtype, gen)
    want = reference(ref_attention.causal_attention, q.float(), keys.float(), values.float(), [offset] * b)
    got = attention.prefill_attention(q, keys, values, offset)
    assert_close(got, want, dtype, "prefill attention")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lengths", [[1], [150, 150], [3, 150, 64]])   # first token; several splits; ragged
def test_decode_attention(dtype, lengths, gen):
    b, H, Hkv, D = len(lengths), 4, 2, 24                          # head dim not a power of two
    Lk = max(lengths)
    q = rand(b, 1, H, D, dtype=dtype, gen=gen).transpose(1, 2)
    keys, values = kv_cache(b, Hkv, Lk, D, dtype, gen)
    offsets = [n - 1 for n in lengths]
    want = reference(ref_attention.causal_attention, q.float(), keys.float(), values.float(), offsets)
    ragged = len(set(lengths)) > 1
    got = attention.decode_attention(q, keys, values, lengths if ragged else None)
    assert_close(got, want, dtype, "decode attention")


# ---- EVS ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_evs_dissimilarity(dtype, gen):
    e = rand(4, 5, 300, dtype=dtype, gen=gen)
    e[2, 1] = 0                                          # a zero vector: cos clamps to 0
    e[3, 2] = e[2, 2] * 3                                # the same direction: dissimilarity 0
    want = reference(ref_evs.evs_dissimilarity, e.float())
    got = evs.evs_dissimilarity(e, ref_evs.FIRST_TUBELET_SCORE)
    assert_close(got[1:], want[1:], dtype, "evs")
    assert torch.equal(got[0].cpu(), want[0].cpu())
    assert torch.equal(evs.evs_dissimilarity(e[:1], 255.0).cpu(), torch.full((1, 5), 255.0))


# ---- dispatch -------------------------------------------------------------------------------
def test_dispatch_rule(monkeypatch):
    cpu = torch.zeros(2)
    monkeypatch.delenv("OMNISTREAM_KERNELS", raising=False)
    assert not tk.enabled(cpu)                                     # auto: CPU tensors take PyTorch
    monkeypatch.setenv("OMNISTREAM_KERNELS", "triton")
    assert tk.enabled(cpu)
    assert not tk.enabled(torch.zeros(2, requires_grad=True))      # no backward in the kernels
    monkeypatch.setenv("OMNISTREAM_KERNELS", "torch")
    assert not tk.enabled(cpu)
    monkeypatch.setenv("OMNISTREAM_KERNELS", "cuda-please")
    with pytest.raises(ValueError, match="OMNISTREAM_KERNELS"):
        tk.enabled(cpu)


def test_decoder_through_the_kernels_equals_pytorch_path():
    """Prefill in two pieces, decode, and a ragged batch: every kernel the decoder dispatches."""
    from engine.checkpoint import init_random
    from engine.config import DecoderConfig
    from engine.model import NemotronH
    from engine.state import State
    cfg = DecoderConfig(vocab_size=96, hidden_size=32, pattern="MEM*E", num_attention_heads=4, num_key_value_heads=2,
                        head_dim=16, mamba_num_heads=4, mamba_head_dim=8, ssm_state_size=16, n_groups=2,
                        chunk_size=16, n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                        moe_shared_expert_intermediate_size=48, routed_scaling_factor=2.5, n_group=2, topk_group=1)
    model = init_random(NemotronH(cfg), seed=0, std=0.15).to(DEVICE)
    ids = torch.randint(3, 96, (2, 30), generator=torch.Generator().manual_seed(1)).to(DEVICE)

    def run():
        st = model.new_state(2)
        outs = [model(st, input_ids=ids[:, :19], logits="all").logits,
                model(st, input_ids=ids[:, 19:27], logits="all").logits]
        for t in range(27, 30):
            outs.append(model(st, input_ids=ids[:, t:t + 1]).logits)
        a, b = st.row(0), st.row(1)
        model(b, input_ids=ids[1:, :2])                              # row 1 two tokens ahead
        batch = State.stack([a, b])
        outs.append(model(batch, input_ids=ids[:, :1]).logits)       # ragged decode
        return outs

    with kernels_mode("torch"):
        want = run()
    with kernels_mode("triton"):
        got = run()
    for i, (g, w) in enumerate(zip(got, want)):
        assert_close(g, w, torch.float32, f"step {i} logits")
    assert max(w.abs().max().item() for w in want) > 0.1             # not a vanishing signal


# ---- compiled for a real GPU ----------------------------------------------------------------
NANO = dict(hidden=2688, heads=32, kv_heads=2, head_dim=128, mamba_heads=64, mamba_head_dim=64, state=128,
            groups=8, experts=128, top_k=6, expert_width=1856)


def nano_launches():
    """Every launch of every launcher, at Nano 30B-A3B sizes in bf16 (and the tl.dot kernels
    in fp32 too), recorded (not run)."""
    c, bf = NANO, torch.bfloat16
    g = torch.Generator().manual_seed(0)
    r = lambda *s, dtype=bf: torch.randn(*s, generator=g).to(dtype)   # noqa: E731
    d_inner = c["mamba_heads"] * c["mamba_head_dim"]
    conv_dim = d_inner + 2 * c["groups"] * c["state"]
    L = 80
    up = [r(c["expert_width"], c["hidden"])] * c["experts"]            # one matrix behind every address
    down = [r(c["hidden"], c["expert_width"])] * c["experts"]
    with tk.recording() as launches:
        norm.rms_norm(r(1, 1, c["hidden"]), r(c["hidden"]), 1e-5)
        proj = r(1, L, 2 * d_inner)
        norm.gated_rms_norm(proj[..., :d_inner], proj[..., d_inner:], r(d_inner), d_inner // c["groups"], 1e-5)
        for T in (L, 1):
            conv.causal_conv1d(r(1, T, conv_dim), r(1, conv_dim, 3), r(conv_dim, 1, 4), r(conv_dim))
        x, dt = r(1, L, c["mamba_heads"], c["mamba_head_dim"]), r(1, L, c["mamba_heads"], dtype=torch.float32)
        A, D = r(c["mamba_heads"], dtype=torch.float32), r(c["mamba_heads"], dtype=torch.float32)
        B = r(1, L, c["groups"], c["state"])
        state = r(1, c["mamba_heads"], c["mamba_head_dim"], c["state"], dtype=torch.float32)
        ssd.ssd_chunked(x, dt, A, B, B, D, state)
        ssd.ssd_step(state, x[:, 0], dt[:, 0], A, B[:, 0], B[:, 0], D)
        for N in (1, 300):
            ids, w = moe.route(r(N, c["experts"], dtype=torch.float32), r(c["experts"], dtype=torch.float32),
                               c["top_k"], 1, 1, True, 2.5)
            moe.grouped_experts(r(N, c["hidden"]), torch.randint(0, c["experts"], (N, c["top_k"])), w, up, down)
        moe.route(r(4, c["experts"], dtype=torch.float32), r(c["experts"], dtype=torch.float32), c["top_k"], 8, 4,
                  True, 2.5)
        q = r(1, L, c["heads"], c["head_dim"]).transpose(1, 2)
        kv = r(1, c["kv_heads"], 4096, c["head_dim"])
        attention.prefill_attention(q, kv[:, :, :L], kv[:, :, :L], 0)
        attention.decode_attention(q[:, :, :1], kv, kv)
        attention.decode_attention(r(2, 1, c["heads"], c["head_dim"]).transpose(1, 2), r(2, 2, 4096, 128),
                                   r(2, 2, 4096, 128), [4000, 17])
        evs.evs_dissimilarity(r(8, 256, c["hidden"]), 255.0)
        # fp32 (exact, non-tensor-core) products in the kernels that use tl.dot
        f = torch.float32
        ssd.ssd_chunked(x.float(), dt, A, B.float(), B.float(), D, state)
        moe.grouped_experts(r(3, 64, dtype=f), torch.randint(0, 4, (3, 2)), w[:3, :2], [r(32, 64, dtype=f)] * 4,
                            [r(64, 32, dtype=f)] * 4)
        attention.prefill_attention(q.float(), kv[:, :, :L].float(), kv[:, :, :L].float(), 0)
        attention.decode_attention(q[:, :, :1].float(), kv.float(), kv.float())
    return launches


def compile_for(target, kernel, args, kwargs):
    """What JITFunction.run does before a launch (argument specialization, options), then
    triton.compile for `target` instead of the local device's."""
    import triton
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    return triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target, options=options.__dict__)


def test_every_kernel_compiles_for_sm90():
    from triton.backends.compiler import GPUTarget
    from triton.runtime.jit import JITFunction
    target = GPUTarget("cuda", 90, 32)                      # H100 / H200
    seen, compiled = set(), []
    for kernel, grid, args, kwargs in nano_launches():
        if not isinstance(kernel, JITFunction):             # TRITON_INTERPRET=1 was set at import
            pytest.skip("kernels were decorated for the interpreter (TRITON_INTERPRET=1)")
        key = (kernel.fn.__name__, tuple(sorted((k, str(v)) for k, v in kwargs.items())))
        if key in seen:
            continue
        seen.add(key)
        k = compile_for(target, kernel, args, kwargs)
        assert "cubin" in k.asm and len(k.asm["cubin"]) > 0, key
        assert k.metadata.shared <= 232448, f"{key}: {k.metadata.shared} bytes of shared memory > sm_90's 227 KB"
        compiled.append(kernel.fn.__name__)
    assert set(compiled) == {
        "rms_norm_kernel", "gated_rms_norm_kernel", "causal_conv1d_kernel", "causal_conv1d_update_kernel",
        "ssd_chunk_state_kernel", "ssd_state_passing_kernel", "ssd_chunk_scan_kernel", "ssd_step_kernel",
        "route_kernel", "expert_up_kernel", "expert_down_kernel", "attention_prefill_kernel",
        "attention_decode_kernel", "attention_merge_kernel", "evs_dissimilarity_kernel"}
