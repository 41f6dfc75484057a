"""Server voice activity detection: speech start and stop on a 16 kHz stream.

`SileroScorer` runs the Silero VAD model that the `silero-vad` wheel ships as ONNX
(`silero_vad/data/silero_vad.onnx`) through onnxruntime; the package's own code, which loads
TorchScript (pickle), is never imported. (The wheel's safetensors file holds other weights than
its ONNX and TorchScript models, so it is not used.) It scores 512-sample windows (32 ms) with
the last 64 samples of the window before as context. `EnergyVAD` is the fallback when the wheel is not
installed: a window is speech when its RMS level is above a threshold in dBFS.

`TurnDetector` turns window scores into the Realtime API's `server_vad` events: speech starts
when a window passes `threshold` (the start is moved back by `prefix_padding_ms`), stops after
`silence_duration_ms` below it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import metadata

import numpy as np
import torch

SAMPLE_RATE = 16000
WINDOW = 512
CONTEXT = 64


def silero_model_path() -> str | None:
    """The ONNX model the silero-vad wheel ships, or None without the wheel."""
    try:
        dist = metadata.distribution("silero-vad")
    except metadata.PackageNotFoundError:
        return None
    path = dist.locate_file("silero_vad/data/silero_vad.onnx")
    return str(path) if path.exists() else None


def load_silero(path: str | None = None):
    """An onnxruntime session of Silero VAD (one CPU thread: it scores 32 ms windows)."""
    import onnxruntime
    path = path or silero_model_path()
    if path is None:
        raise FileNotFoundError("silero-vad is not installed (pip install silero-vad onnxruntime); use the energy VAD")
    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


class SileroScorer:
    """Speech probability of each 512-sample window of one stream (keeps context and LSTM state)."""

    kind = "silero"

    def __init__(self, model):
        self.model = model
        self.context = np.zeros((1, CONTEXT), np.float32)
        self.state = np.zeros((2, 1, 128), np.float32)

    def score(self, window: torch.Tensor) -> float:
        x = np.concatenate([self.context, window.numpy().reshape(1, WINDOW).astype(np.float32)], axis=1)
        out, self.state = self.model.run(None, {"input": x, "state": self.state, "sr": np.array(SAMPLE_RATE, np.int64)})
        self.context = x[:, -CONTEXT:]
        return float(out[0, 0])


class EnergyVAD:
    """Fallback scorer: 1.0 when the window's RMS level reaches `threshold_db` dBFS, else 0.0."""

    kind = "energy"

    def __init__(self, threshold_db: float = -45.0):
        self.threshold_db = threshold_db

    def score(self, window: torch.Tensor) -> float:
        rms = float(window.float().pow(2).mean().sqrt())
        return 1.0 if 20 * math.log10(max(rms, 1e-10)) >= self.threshold_db else 0.0


@dataclass
class VadEvent:
    type: str           # "speech_started" | "speech_stopped"
    ms: int             # on the stream's clock (audio_start_ms / audio_end_ms)


class TurnDetector:
    """`server_vad` turn detection over a 16 kHz stream fed in pieces of any size."""

    def __init__(self, scorer, threshold: float = 0.5, prefix_padding_ms: int = 300, silence_duration_ms: int = 500):
        self.scorer = scorer
        self.threshold, self.prefix_padding_ms, self.silence_duration_ms = threshold, prefix_padding_ms, silence_duration_ms
        self._buf = torch.zeros(0)
        self._pos = 0                   # samples scored so far
        self.speaking = False
        self._silent_since: int | None = None

    def feed(self, samples: torch.Tensor) -> list[VadEvent]:
        self._buf = torch.cat([self._buf, samples.float()])
        events = []
        while self._buf.numel() >= WINDOW:
            window, self._buf = self._buf[:WINDOW], self._buf[WINDOW:]
            p = self.scorer.score(window)
            start_ms, end_ms = self._pos * 1000 // SAMPLE_RATE, (self._pos + WINDOW) * 1000 // SAMPLE_RATE
            self._pos += WINDOW
            if p >= self.threshold:
                self._silent_since = None
                if not self.speaking:
                    self.speaking = True
                    events.append(VadEvent("speech_started", max(0, start_ms - self.prefix_padding_ms)))
            elif self.speaking:
                if self._silent_since is None:
                    self._silent_since = start_ms
                if end_ms - self._silent_since >= self.silence_duration_ms:
                    self.speaking = False
                    events.append(VadEvent("speech_stopped", self._silent_since))
                    self._silent_since = None
        return events


_SILERO = None


def make_scorer(kind: str = "auto"):
    """A fresh per-stream scorer: "silero", "energy", or "auto" (silero when its wheel is there)."""
    global _SILERO
    if kind in ("auto", "silero"):
        if _SILERO is None and (kind == "silero" or silero_model_path()):
            _SILERO = load_silero()
        if _SILERO is not None:
            return SileroScorer(_SILERO)
    if kind not in ("auto", "energy", "silero"):
        raise ValueError(f"unknown VAD {kind!r} (expected auto, silero or energy)")
    return EnergyVAD()
