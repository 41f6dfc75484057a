"""Our NemotronH against transformers' (the oracle) on tiny random checkpoints it saved.

Every case: last-position logits within 1e-4 in fp32, and 32 greedy tokens identical. Also the
Mamba2 scan against a recurrence written here, and transformers' prefill dt clamp shown inactive.
The training path's gradients equal transformers' too.
"""

import math

import pytest
import torch

from builders import build_text_checkpoint
from engine.generate import SamplingParams, Session, generate
from engine.loader import load_decoder
from kernels.mamba import ssd_chunked, ssd_sequential, ssd_step

CASES = {
    "moe+mlp": ("M*EM-E*M", {}),
    "no-moe": ("M*M-*M-", {}),
    "grouped-router": ("MEM*E", dict(n_group=4, topk_group=2)),
    "latent-moe": ("M*EME", dict(moe_latent_size=24)),
    "gqa1": ("M*E*", dict(num_key_value_heads=4)),
    "gqa4": ("M*E*", dict(num_key_value_heads=1)),
    "mamba-groups1": ("MM*E", dict(n_groups=1)),
    "mamba-groups4": ("MM*E", dict(n_groups=4)),
    "mamba-groups8": ("MM*-", dict(n_groups=8)),
}


def hf_greedy(hf, ids: torch.Tensor, n: int) -> list[int]:
    """transformers' greedy continuation, recomputed from scratch each step (no cache, no EOS)."""
    out = []
    with torch.no_grad():
        for _ in range(n):
            nxt = hf(ids).logits[0, -1].argmax()
            out.append(int(nxt))
            ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    return out


@pytest.fixture(scope="module", params=list(CASES))
def pair(request, tmp_path_factory):
    pattern, overrides = CASES[request.param]
    path = tmp_path_factory.mktemp(request.param)
    hf = build_text_checkpoint(path, pattern, seed=hash(request.param) % 1000, **overrides)
    return hf, load_decoder(path)


def test_logits_and_greedy_match_transformers(pair):
    hf, ours = pair
    ids = torch.randint(3, ours.cfg.vocab_size, (1, 53), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = hf(ids).logits[0, -1]
    s = Session(ours)
    got = s.prefill(ids[0])[0]
    assert (got - ref).abs().max().item() <= 1e-4
    assert list(generate(s, SamplingParams(max_new_tokens=32))) == hf_greedy(hf, ids, 32)


def test_incremental_prefill_equals_one_shot(pair):
    _, ours = pair
    ids = torch.randint(3, ours.cfg.vocab_size, (70,), generator=torch.Generator().manual_seed(1)).tolist()
    one = Session(ours)
    ref = one.prefill(ids)
    inc = Session(ours)
    for a, b in [(0, 1), (1, 6), (6, 23), (23, 24), (24, 61), (61, 70)]:   # uneven, across chunk borders
        got = inc.prefill(ids[a:b])
    assert inc.length == one.length == 70
    assert (got - ref).abs().max().item() <= 1e-5
    p = SamplingParams(max_new_tokens=16)
    assert list(generate(inc, p)) == list(generate(one, p))


def test_fork_then_continue_equals_fresh_run(pair):
    _, ours = pair
    g = torch.Generator().manual_seed(2)
    prefix, q1, q2 = (torch.randint(3, ours.cfg.vocab_size, (n,), generator=g).tolist() for n in (40, 7, 9))
    stream = Session(ours)
    stream.prefill(prefix)
    fork = stream.fork()
    fork.prefill(q1)                       # the question, answered from the snapshot...
    answer = list(generate(fork, SamplingParams(max_new_tokens=10)))
    stream.prefill(q2)                     # ...while the stream keeps appending to the original
    fresh = Session(ours)
    fresh.prefill(prefix + q1)
    assert answer == list(generate(fresh, SamplingParams(max_new_tokens=10)))
    fresh2 = Session(ours)
    assert (fresh2.prefill(prefix + q2) - stream.logits).abs().max().item() <= 1e-5
    # a fork of a fork, continued
    f2 = fork.fork()
    f2.prefill(q2)
    fresh3 = Session(ours)
    assert (fresh3.prefill(prefix + q1 + answer + q2) - f2.logits).abs().max().item() <= 1e-5


def test_training_gradients_match_transformers(pair):
    """The training path (recipes.train's undecorated forward) backpropagates what transformers
    does: the gradients of a cross-entropy loss with respect to the input embeddings and to every
    weight (routed experts compared stacked, as transformers stores them) agree within 1e-5."""
    from recipes.train.train import decoder_forward

    hf, ours = pair
    g = torch.Generator().manual_seed(3)
    H = ours.cfg.hidden_size
    x = torch.randn(2, 45, H, generator=g) * 0.5
    y = torch.randint(3, ours.cfg.vocab_size, (2, 45), generator=g)
    hf_logits = lambda e: hf(inputs_embeds=e, use_cache=False).logits
    our_logits = lambda e: ours.lm_head(decoder_forward(ours, ours.new_state(batch=2), inputs_embeds=e,
                                                        logits="none").hidden)
    got = {}
    ours.requires_grad_(True)
    try:
        for name, model, fn in (("hf", hf, hf_logits), ("ours", ours, our_logits)):
            model.zero_grad(set_to_none=True)
            e = x.clone().requires_grad_(True)
            logits = fn(e)
            torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1)).backward()
            grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
            got[name] = (e.grad, grads)
    finally:
        ours.requires_grad_(False)
        ours.zero_grad(set_to_none=True)
        hf.zero_grad(set_to_none=True)
    (ref_x, ref_w), (our_x, our_w) = got["hf"], got["ours"]

    def close(a, b):
        return (a - b).abs().max().item() <= 1e-5 * max(1.0, b.abs().max().item())

    assert close(our_x, ref_x)
    mapped, experts = {}, {}          # transformers' names -> our gradients; its experts are stacked
    for n, grad in our_w.items():
        parts = (n.replace("backbone.", "model.", 1) if n.startswith("backbone.") else n).split(".")
        if "experts" in parts and parts[-3].isdigit():         # experts.<e>.up_proj.weight
            experts.setdefault(".".join(parts[:-3] + [parts[-2]]), {})[int(parts[-3])] = grad
        else:
            mapped[".".join(parts)] = grad
    for name, per_expert in experts.items():
        ref = ref_w[name]
        mapped[name] = torch.stack([per_expert.get(e, torch.zeros_like(ref[0])) for e in range(ref.shape[0])])
    assert set(mapped) == set(ref_w)
    for name, grad in mapped.items():
        assert close(grad, ref_w[name]), name


def test_dt_clamp_of_transformers_prefill_is_inactive(tmp_path):
    """The parity checkpoints keep softplus(dt + dt_bias) above time_step_min, where transformers
    clamps during prefill (and not in decode); otherwise the comparison would be meaningless."""
    hf = build_text_checkpoint(tmp_path, "M*EM-E*M")
    seen = []
    for layer in hf.model.layers:
        if layer.block_type == "linear_attention":
            m = layer.mixer
            m.in_proj.register_forward_hook(
                lambda mod, inp, out, m=m: seen.append(
                    torch.nn.functional.softplus(out[..., -m.num_heads:] + m.dt_bias).min().item()))
    ids = torch.randint(3, hf.config.vocab_size, (1, 200), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        hf(ids)
    assert seen and min(seen) > hf.config.time_step_min


def _recurrence(x, dt, A, B, C, D, s):
    """h_t = exp(dt A) h_{t-1} + dt x_t B_t ; y_t = C_t h_t + D x_t, one step at a time (float64)."""
    h = x.shape[2]
    rep = h // B.shape[2]
    ys = []
    for t in range(x.shape[1]):
        Bt, Ct = B[:, t].repeat_interleave(rep, 1), C[:, t].repeat_interleave(rep, 1)     # (b, h, n)
        s = torch.exp(dt[:, t] * A)[..., None, None] * s + (dt[:, t, :, None] * x[:, t])[..., None] * Bt[:, :, None]
        ys.append((s * Ct[:, :, None]).sum(-1) + D[:, None] * x[:, t])
    return torch.stack(ys, 1), s


@pytest.mark.parametrize("L,chunk", [(1, 16), (37, 16), (300, 64), (257, 128)])
def test_ssd_scan_equals_recurrence(L, chunk):
    g = torch.Generator().manual_seed(L)
    b, h, p, n, grp = 2, 8, 8, 16, 4
    x = torch.randn(b, L, h, p, generator=g, dtype=torch.float64)
    dt = torch.nn.functional.softplus(torch.randn(b, L, h, generator=g, dtype=torch.float64) - 2)
    A = -torch.rand(h, generator=g, dtype=torch.float64) * 4
    B, C = (torch.randn(b, L, grp, n, generator=g, dtype=torch.float64) for _ in range(2))
    D = torch.randn(h, generator=g, dtype=torch.float64)
    s0 = torch.randn(b, h, p, n, generator=g, dtype=torch.float64)
    y_ref, s_ref = _recurrence(x, dt, A, B, C, D, s0)
    y, s = ssd_chunked(x.float(), dt.float(), A.float(), B.float(), C.float(), D.float(), s0.float(), chunk)
    scale = y_ref.abs().max().item()
    assert (y.double() - y_ref).abs().max().item() <= 1e-4 * max(1.0, scale)
    assert (s.double() - s_ref).abs().max().item() <= 1e-4 * max(1.0, s_ref.abs().max().item())
    y2, s2 = ssd_sequential(x, dt, A, B, C, D, s0)
    assert torch.allclose(y2, y_ref, atol=1e-10) and torch.allclose(s2, s_ref, atol=1e-10)
    st = s0.float().clone()    # the decode step, position by position
    for t in range(min(L, 5)):
        yt = ssd_step(st, x[:, t].float(), dt[:, t].float(), A.float(), B[:, t].float(), C[:, t].float(), D.float())
        _, s_t = _recurrence(x[:, :t + 1], dt[:, :t + 1], A, B, C, D, s0)
        assert (st.double() - s_t).abs().max().item() <= 1e-4 * max(1.0, s_t.abs().max().item())
        assert (yt.double() - y_ref[:, t]).abs().max().item() <= 1e-4 * max(1.0, scale)


def test_long_sequence_matches_transformers_and_token_by_token(tmp_path):
    """600 tokens, many Mamba chunks: one-shot prefill vs transformers, and vs decoding the same
    600 tokens one at a time (the recurrent path)."""
    hf = build_text_checkpoint(tmp_path, "M*EM", chunk_size=64)
    ours = load_decoder(tmp_path)
    ids = torch.randint(3, ours.cfg.vocab_size, (1, 600), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = hf(ids).logits[0]
    st = ours.new_state()
    full = ours(st, input_ids=ids, logits="all").logits[0]
    assert (full - ref).abs().max().item() <= 1e-4
    st2 = ours.new_state()
    steps = torch.cat([ours(st2, input_ids=ids[:, t:t + 1]).logits[0] for t in range(600)])
    assert (steps - full).abs().max().item() <= 1e-4
    assert math.isfinite(steps.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_tracks_fp32(tmp_path, dtype):
    build_text_checkpoint(tmp_path, "M*EM-E*M")
    ref, low = load_decoder(tmp_path), load_decoder(tmp_path, dtype=dtype)
    assert low.backbone.layers[0].mixer.in_proj.weight.dtype == dtype
    assert low.backbone.layers[2].mixer.gate.weight.dtype == torch.float32   # the router stays fp32
    ids = torch.randint(3, ref.cfg.vocab_size, (90,), generator=torch.Generator().manual_seed(5)).tolist()
    a, b = Session(ref).prefill(ids), Session(low).prefill(ids)
    assert b.dtype == torch.float32 and torch.isfinite(b).all()
    assert (a - b).abs().max().item() <= 0.05 * a.abs().max().item() + 0.05
