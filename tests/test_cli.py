"""`python -m app generate`, run as a subprocess on tiny checkpoints: the prompt it builds, its
greedy output against transformers, the reasoning budget, and its errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from builders import build_text_checkpoint
from engine.tokenizer import SAMPLE_CORPUS, Tokenizer, build_chat_prompt
from tokenizer_fixture import build_test_tokenizer

ROOT = Path(__file__).resolve().parent.parent
STOP_IDS = (2, 11)          # </s>, <|im_end|>
THINK_END_ID = 13


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    # one thread: the machine has 2 cores shared with other work, where OpenMP's spinning
    # threads make a tiny model's prefill 100x slower
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "app", "generate", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def last_json(r: subprocess.CompletedProcess) -> dict:
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if line.strip()]
    assert lines, (r.stdout, r.stderr)
    out = json.loads(lines[-1])
    assert {"prompt_ids", "output_ids", "text"} <= set(out)
    return out


def up_to_stop(ids: list[int]) -> list[int]:
    for i, t in enumerate(ids):
        if t in STOP_IDS:
            return ids[:i + 1]
    return ids


def hf_greedy(hf, prompt_ids: list[int], n: int) -> list[int]:
    """transformers' greedy continuation (not stopped at any eos), cut after the first stop id."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            out = hf.generate(torch.tensor([prompt_ids]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                              pad_token_id=0)
    finally:
        torch.set_num_threads(threads)
    new = out[0, len(prompt_ids):].tolist()
    assert len(new) == n
    return up_to_stop(new)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """(folder, transformers model, tokenizer) of a tiny checkpoint with the test tokenizer."""
    path = tmp_path_factory.mktemp("cli")
    hf = build_text_checkpoint(path, "M*EM-E")
    build_test_tokenizer(path)
    return path, hf, Tokenizer.from_dir(path)


def chat_ids(tok: Tokenizer, prompt: str, reasoning: bool = True, system: str = "") -> list[int]:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return tok.encode(build_chat_prompt(messages, reasoning=reasoning))


def test_generate_json_matches_transformers(ckpt):
    path, hf, tok = ckpt
    out = last_json(run_cli("--model", str(path), "--prompt", "Describe the image.", "--greedy",
                            "--max-new-tokens", "8", "--json"))
    want_prompt = chat_ids(tok, "Describe the image.")
    assert out["prompt_ids"] == want_prompt
    assert want_prompt[-2:] == [tok.token_id("<think>")] + tok.encode("\n")      # prompt ends "<think>\n"
    assert want_prompt[0] == tok.token_id("<|im_start|>")                      # no BOS
    assert out["output_ids"] == hf_greedy(hf, want_prompt, 8)
    assert out["text"] == tok.decode(out["output_ids"])
    assert out["stats"]["output_tokens"] == len(out["output_ids"])


def test_no_think_and_system(ckpt):
    path, hf, tok = ckpt
    out = last_json(run_cli("--model", str(path), "--prompt", "What is happening?", "--system", "Be brief.",
                            "--no-think", "--greedy", "--max-new-tokens", "8", "--json"))
    want_prompt = chat_ids(tok, "What is happening?", reasoning=False, system="Be brief.")
    assert out["prompt_ids"] == want_prompt
    assert want_prompt[-2:] == [tok.token_id("<think>"), tok.token_id("</think>")]
    assert tok.decode(want_prompt).startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
    assert out["output_ids"] == hf_greedy(hf, want_prompt, 8)


def test_raw_prompt_is_the_whole_input(ckpt):
    path, hf, tok = ckpt
    text = "The quick brown fox"
    out = last_json(run_cli("--model", str(path), "--prompt", text, "--raw", "--greedy",
                            "--max-new-tokens", "8", "--json"))
    assert out["prompt_ids"] == tok.encode(text)
    assert out["output_ids"] == hf_greedy(hf, tok.encode(text), 8)


def test_reasoning_budget_closes_the_think_span(ckpt):
    path, hf, tok = ckpt
    out = last_json(run_cli("--model", str(path), "--prompt", "Describe the image.", "--greedy",
                            "--reasoning-budget", "3", "--max-new-tokens", "8", "--json"))
    prompt, got = out["prompt_ids"], out["output_ids"]
    free = hf_greedy(hf, prompt, 8)
    if THINK_END_ID in free[:3] or any(t in STOP_IDS for t in free[:3]):
        # the model closed the span (or stopped) by itself within the budget: nothing forced
        assert got == free
        return
    close = tok.encode("\n") + [THINK_END_ID]
    assert got[:3] == free[:3]
    assert got[3:3 + len(close)] == close
    assert THINK_END_ID in got[3:5]
    assert got.count(THINK_END_ID) >= 1 and "</think>" in out["text"]
    # after the forced close, greedy decoding continues from the stream that includes it
    n = 3 + len(close)
    assert got[n:] == hf_greedy(hf, prompt + got[:n], 8 - n)
    assert len(got) <= 8


def _stop_first_checkpoint(path: Path, stop_id: int) -> None:
    """A tiny checkpoint whose greedy output is always `stop_id` (plus the test tokenizer)."""
    from engine.checkpoint import init_random, save_decoder
    from engine.config import DecoderConfig
    from engine.model import NemotronH
    cfg = DecoderConfig(vocab_size=300, hidden_size=64, pattern="M*E", num_attention_heads=4, num_key_value_heads=2,
                        head_dim=16, mamba_num_heads=8, mamba_head_dim=8, ssm_state_size=16, n_groups=2,
                        chunk_size=16, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                        moe_shared_expert_intermediate_size=32, eos_token_ids=(2, 11))
    model = init_random(NemotronH(cfg), seed=0)
    with torch.no_grad():
        model.backbone.embeddings.weight[:, 0] = 50.0        # residual channel 0 stays large and positive
        model.backbone.norm_f.weight.zero_()
        model.backbone.norm_f.weight[0] = 1.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[stop_id, 0] = 1.0                # only stop_id gets a positive logit
    save_decoder(model, path)
    build_test_tokenizer(path)


def test_stop_token_ends_generation_even_at_the_reasoning_budget(tmp_path):
    """A stop token generated as the budget-th thinking token must still end the answer; the
    CLI must not append the forced `\\n</think>` after it and keep generating."""
    _stop_first_checkpoint(tmp_path, stop_id=11)
    out = last_json(run_cli("--model", str(tmp_path), "--prompt", "hi", "--greedy", "--max-new-tokens", "6",
                            "--reasoning-budget", "1", "--json"))
    assert out["output_ids"][0] == 11          # the crafted model answers <|im_end|> at once
    assert out["output_ids"] == [11]


def test_tokenizer_without_think_fails_before_loading_weights(tmp_path, ckpt):
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers
    path, _, _ = ckpt
    (tmp_path / "config.json").write_bytes((path / "config.json").read_bytes())
    (tmp_path / "model.safetensors").write_bytes(b"not weights")   # loading them would fail differently
    tk = HFTokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(SAMPLE_CORPUS * 10, trainer)
    tk.save(str(tmp_path / "tokenizer.json"))
    assert tk.token_to_id("<think>") is None and tk.token_to_id("<|im_start|>") is not None

    r = run_cli("--model", str(tmp_path), "--prompt", "hi", "--greedy", "--max-new-tokens", "4", "--json")
    assert r.returncode != 0
    assert "<think>" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert "safetensors" not in r.stderr, r.stderr
    assert str(tmp_path / "tokenizer.json") in r.stderr


def test_prompt_longer_than_context(tmp_path, ckpt):
    path, _, tok = ckpt
    for f in path.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["max_position_embeddings"] = 16
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert len(chat_ids(tok, "Describe the image in detail.")) > 16
    r = run_cli("--model", str(tmp_path), "--prompt", "Describe the image in detail.", "--greedy",
                "--max-new-tokens", "4", "--json")
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "max_position_embeddings" in r.stderr and "16" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stdout.strip() == ""


def test_missing_model_folder():
    r = run_cli("--model", "/nonexistent", "--prompt", "hi", "--max-new-tokens", "4")
    assert r.returncode != 0
    assert "/nonexistent" in r.stderr and "error" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr, r.stderr


def test_default_model():
    r = run_cli("--prompt", "hi", "--max-new-tokens", "4", "--greedy", "--json")
    out = last_json(r)
    tok = Tokenizer.from_dir(ROOT / "assets" / "default-model")
    assert out["prompt_ids"] == chat_ids(tok, "hi")
    assert 1 <= len(out["output_ids"]) <= 4
    assert out["text"] == tok.decode(out["output_ids"])
