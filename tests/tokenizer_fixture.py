"""The tests' tiny tokenizer: engine.tokenizer.train_tokenizer on its sample corpus."""

from __future__ import annotations

import os

from engine.tokenizer import NUM_RESERVED, SPECIAL_TOKENS, special_token_list, train_tokenizer  # noqa: F401


def build_test_tokenizer(out_dir: str | os.PathLike, vocab_size: int = 300) -> str:
    """Write tokenizer.json (+ a minimal tokenizer_config.json) into `out_dir`; returns its path."""
    return train_tokenizer(out_dir, vocab_size=vocab_size)
