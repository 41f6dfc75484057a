"""Generation: sampling, stop tokens, MTP speculative decoding, continuous batching, memory."""

import pytest
import torch

from builders import align_mtp_head, build_text_checkpoint
from engine.generate import BatchDecoder, SamplingParams, Session, generate, sample
from engine.loader import load_decoder


@pytest.fixture(scope="module")
def mtp_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("mtp")
    build_text_checkpoint(path, "M*EM-E*M", mtp=True)
    return load_decoder(path)


def ids(n, seed, vocab=320):
    return torch.randint(3, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize("k", [1, 2, 3])
def test_speculative_greedy_equals_plain_greedy(mtp_model, k):
    prompt = ids(45, 0)
    plain = Session(mtp_model)
    plain.prefill(prompt)
    want = list(generate(plain, SamplingParams(max_new_tokens=40)))
    spec = Session(mtp_model, speculative=True)
    spec.prefill(prompt[:11])              # streamed in two pieces: MTP state follows the stream
    spec.prefill(prompt[11:])
    got = list(generate(spec, SamplingParams(max_new_tokens=40), speculative=k))
    assert got == want
    assert spec.spec.steps > 0 and spec.spec.drafted == k * spec.spec.steps
    assert spec.length == plain.length     # both read the prompt and every emitted token
    assert (spec.prefill([5, 6]) - plain.prefill([5, 6])).abs().max().item() <= 1e-5


def aligned_mtp_model(path):
    build_text_checkpoint(path, "M*E", mtp=True)
    return align_mtp_head(load_decoder(path))


@pytest.mark.parametrize("k", [1, 3])
def test_speculative_accepts_what_a_matching_head_drafts(tmp_path, k):
    m = aligned_mtp_model(tmp_path)
    plain = Session(m)
    plain.prefill(ids(20, 3))
    want = list(generate(plain, SamplingParams(max_new_tokens=30)))
    s = Session(m, speculative=True)
    s.prefill(ids(20, 3))
    assert list(generate(s, SamplingParams(max_new_tokens=30), speculative=k)) == want
    assert s.spec.acceptance_rate == 1.0
    assert s.spec.steps <= -(-30 // (k + 1)) + 1     # k + 1 tokens a forward


def test_stop_tokens_and_max_tokens(mtp_model):
    prompt = ids(30, 1)
    s = Session(mtp_model)
    s.prefill(prompt)
    free = list(generate(s.fork(), SamplingParams(max_new_tokens=20)))
    stop = free[5]
    got = list(generate(s.fork(), SamplingParams(max_new_tokens=20, stop_ids=(stop,))))
    assert got == free[:free.index(stop) + 1]
    assert len(list(generate(s.fork(), SamplingParams(max_new_tokens=7)))) == 7
    spec = Session(mtp_model, speculative=True)
    spec.prefill(prompt)
    assert list(generate(spec, SamplingParams(max_new_tokens=20, stop_ids=(stop,)), speculative=3)) == got
    spec2 = Session(mtp_model, speculative=True)
    spec2.prefill(prompt)
    assert list(generate(spec2, SamplingParams(max_new_tokens=7), speculative=3)) == free[:7]


def test_sampling_filters():
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([[0.0, 3.0, 2.9, -1.0, 1.0]])
    assert sample(logits, SamplingParams(temperature=1.0, top_k=1)).item() == 1
    draws = {sample(logits, SamplingParams(temperature=1.0, top_k=2), g).item() for _ in range(200)}
    assert draws == {1, 2}
    draws = {sample(logits, SamplingParams(temperature=1.0, top_p=0.5), g).item() for _ in range(200)}
    assert draws <= {1, 2} and 1 in draws
    assert {sample(logits, SamplingParams(temperature=1.0, top_p=1e-6), g).item() for _ in range(50)} == {1}
    hot = [sample(logits, SamplingParams(temperature=5.0), g).item() for _ in range(400)]
    assert set(hot) == {0, 1, 2, 3, 4}
    with pytest.raises(ValueError):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError):
        SamplingParams(temperature=-1)


def test_seeded_sampling_is_reproducible(mtp_model):
    p = SamplingParams(max_new_tokens=15, temperature=0.8, top_p=0.9, seed=7)
    runs = []
    for _ in range(2):
        s = Session(mtp_model)
        s.prefill(ids(12, 2))
        runs.append(list(generate(s, p)))
    assert runs[0] == runs[1]


def test_batch_decoding_with_joins_and_leaves_equals_single_runs(mtp_model):
    prompts = [ids(5, 10), ids(17, 11), ids(40, 12), ids(2, 13), ids(9, 14)]
    budgets = [12, 5, 10, 8, 3]
    want = []
    for pr, n in zip(prompts, budgets):
        s = Session(mtp_model)
        s.prefill(pr)
        want.append(list(generate(s, SamplingParams(max_new_tokens=n))))
    sessions = []
    for pr in prompts:
        s = Session(mtp_model)
        s.prefill(pr)
        sessions.append(s)
    got = {id(s): [] for s in sessions}
    bd = BatchDecoder(mtp_model)
    bd.join(sessions[0], SamplingParams(max_new_tokens=budgets[0]))
    bd.join(sessions[1], SamplingParams(max_new_tokens=budgets[1]))
    step, sizes = 0, []
    while len(bd):
        for s, t in bd.step():
            got[id(s)].append(t)
        step += 1
        sizes.append(len(bd))
        if step in (2, 3, 6):     # sessions join mid-flight, others have left
            i = {2: 2, 3: 3, 6: 4}[step]
            bd.join(sessions[i], SamplingParams(max_new_tokens=budgets[i]))
    assert [got[id(s)] for s in sessions] == want
    assert max(sizes) >= 3
    # a session that left continues from where it stopped
    fresh = Session(mtp_model)
    fresh.prefill(prompts[1] + want[1])
    assert (sessions[1].prefill([7]) - fresh.prefill([7])).abs().max().item() <= 1e-5


def test_memory_report_and_cheap_fork(mtp_model):
    s = Session(mtp_model)
    s.prefill(ids(300, 3))
    m1 = s.memory_bytes()
    s.prefill(ids(300, 4))
    m2 = s.memory_bytes()
    assert m2["kv_used"] > m1["kv_used"] > 0
    f = s.fork()
    mf = f.memory_bytes()
    assert mf["shared"] >= m2["kv_used"] and mf["kv_used"] == 0
    assert mf["own"] < m2["own"]          # the fork owns its Mamba states, not the KV cache


def test_context_length_is_enforced(tmp_path):
    build_text_checkpoint(tmp_path, "M*E", max_position_embeddings=64)
    m = load_decoder(tmp_path)
    s = Session(m)
    s.prefill(ids(60, 5))
    with pytest.raises(ValueError, match="context length"):
        s.prefill(ids(10, 6))
    assert s.length == 60                  # the failed call changed nothing
    assert len(list(generate(s.fork(), SamplingParams(max_new_tokens=10)))) == 4   # stops at the limit
    s.prefill(ids(4, 7))
    with pytest.raises(ValueError, match="context length"):
        next(generate(s, SamplingParams(max_new_tokens=10)))


def test_bad_requests_are_rejected(mtp_model):
    s = Session(mtp_model)
    with pytest.raises(ValueError, match="prefill"):
        next(generate(s, SamplingParams()))
    with pytest.raises(ValueError, match="token ids"):
        s.prefill([5, 10_000])
    with pytest.raises(ValueError, match="embeddings"):
        s.prefill(embeds=torch.zeros(3, mtp_model.cfg.hidden_size + 1))
    assert s.length == 0
    s.prefill([5, 6])
    with pytest.raises(ValueError, match="speculative"):
        next(generate(s, SamplingParams(), speculative=2))
    spec = Session(mtp_model, speculative=True)
    spec.prefill([5, 6])
    with pytest.raises(ValueError, match="greedy"):
        next(generate(spec, SamplingParams(temperature=0.7), speculative=2))
