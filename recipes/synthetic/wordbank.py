"""The shipped spoken-word bank (assets/wordbank/): short words, 16 kHz mono FLAC, and their manifest."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import av
import numpy as np

WORDBANK_DIR = Path(__file__).resolve().parents[2] / "assets" / "wordbank"
MAX_WORD_SAMPLES = 5 * 16000


class WordBank:
    """Words by category (from manifest.json); `audio(word)` decodes a word once, float32 in [-1, 1]."""

    def __init__(self, folder: Path = WORDBANK_DIR):
        self.folder = Path(folder)
        manifest = self.folder / "manifest.json"
        try:
            m = json.loads(manifest.read_text())
            self.sample_rate = int(m["sample_rate"])
            entries = [(w["word"], w["category"], w["file"]) for w in m["words"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{manifest}: not a word bank manifest ({e}); re-render it with "
                             "python -m recipes.synthetic.render_wordbank") from e
        self.files = {w: self.folder / f for w, _, f in entries}
        self.categories: dict[str, list[str]] = {}
        for w, c, _ in entries:
            self.categories.setdefault(c, []).append(w)
        self._audio: dict[str, np.ndarray] = {}

    @property
    def words(self) -> list[str]:
        return list(self.files)

    @property
    def word_seconds(self) -> dict[str, float]:
        """Each word's spoken length in seconds (the timeline sampler places words by it)."""
        return {w: len(self.audio(w)) / self.sample_rate for w in self.words}

    def audio(self, word: str) -> np.ndarray:
        if word not in self._audio:
            path = self.files[word]
            try:
                with av.open(str(path)) as c:
                    stream = c.streams.audio[0]
                    if stream.rate != self.sample_rate or stream.channels != 1:
                        raise ValueError(f"{path}: expected {self.sample_rate} Hz mono, got {stream.rate} Hz "
                                         f"with {stream.channels} channels")
                    x = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(stream)])
            except av.FFmpegError as e:
                raise ValueError(f"{path}: cannot decode the word recording ({e})") from e
            if not 0 < len(x) <= MAX_WORD_SAMPLES:
                raise ValueError(f"{path}: {len(x)} samples, expected a short word (at most {MAX_WORD_SAMPLES})")
            self._audio[word] = (x.astype(np.float32) / 32768.0) if x.dtype == np.int16 else x.astype(np.float32)
        return self._audio[word]


@lru_cache(maxsize=4)
def load_wordbank(folder: Path = WORDBANK_DIR) -> WordBank:
    return WordBank(folder)
