"""Render the spoken-word bank (assets/wordbank/) once with espeak-ng.

    python -m recipes.synthetic.render_wordbank [--out assets/wordbank] [--voice en-us] [--speed 150]

Each word is spoken by espeak-ng into a WAV file, trimmed of leading and trailing silence,
resampled to 16 kHz mono, peak-normalised to -1 dBFS and stored as 16-bit FLAC, with a
manifest.json listing word, category, file and length. The clip generator reads only the
shipped files; this script is needed only to re-render them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

import av
import numpy as np

SAMPLE_RATE = 16000
WORDBANK_DIR = Path(__file__).resolve().parents[2] / "assets" / "wordbank"

# Colours and shapes are also what the video draws, so a spoken word can name what appears.
WORDS = {
    "colour": ["red", "green", "blue", "yellow", "orange", "purple", "pink", "white"],
    "shape": ["circle", "square", "triangle", "star", "diamond", "hexagon"],
    "number": ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"],
    "animal": ["cat", "dog", "bird", "fish", "horse", "cow", "frog", "lion", "bear", "duck", "sheep", "mouse"],
    "object": ["apple", "ball", "car", "tree", "house", "boat", "key", "moon", "sun", "book", "clock", "shoe",
               "cup", "bell", "train", "chair"],
}

SILENCE = 0.02   # trim threshold, relative to the peak


def espeak_binary() -> str | None:
    return shutil.which("espeak-ng")


def _espeak_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    return " ".join(out.split()[:4])


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise ValueError(f"{path}: expected 16-bit mono WAV from espeak-ng")
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0
        return data, w.getframerate()


def _resample(x: np.ndarray, rate: int) -> np.ndarray:
    """Resample with libswresample (the same library the decoders use)."""
    if rate == SAMPLE_RATE:
        return x
    frame = av.AudioFrame.from_ndarray(x[None, :].astype(np.float32), format="flt", layout="mono")
    frame.sample_rate = rate
    res = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    out = [f.to_ndarray().reshape(-1) for f in res.resample(frame)]
    out += [f.to_ndarray().reshape(-1) for f in res.resample(None)]
    return np.concatenate(out)


def _trim(x: np.ndarray, pad: int = int(0.01 * SAMPLE_RATE)) -> np.ndarray:
    loud = np.flatnonzero(np.abs(x) > SILENCE * np.abs(x).max())
    return x[max(0, loud[0] - pad): loud[-1] + 1 + pad]


def write_flac(path: Path, x: np.ndarray) -> None:
    pcm = np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int16)
    with av.open(str(path), "w", format="flac") as out:
        stream = out.add_stream("flac", rate=SAMPLE_RATE, layout="mono")
        for start in range(0, len(pcm), 4096):
            frame = av.AudioFrame.from_ndarray(pcm[None, start:start + 4096], format="s16", layout="mono")
            frame.sample_rate, frame.pts = SAMPLE_RATE, start
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def render(out_dir: Path, voice: str = "en-us", speed: int = 150, words: dict[str, list[str]] = WORDS) -> dict:
    binary = espeak_binary()
    if binary is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng); the shipped word bank "
                           "in assets/wordbank/ works without it")
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    with tempfile.TemporaryDirectory() as tmp:
        for category, names in words.items():
            for word in names:
                wav = Path(tmp) / f"{word}.wav"
                subprocess.run([binary, "-v", voice, "-s", str(speed), "-w", str(wav), word], check=True)
                x, rate = _read_wav(wav)
                x = _trim(_resample(x, rate))
                x = x * (10 ** (-1 / 20) / np.abs(x).max())
                write_flac(out_dir / f"{word}.flac", x)
                entries.append({"word": word, "category": category, "file": f"{word}.flac", "samples": len(x)})
    manifest = {"sample_rate": SAMPLE_RATE, "voice": voice, "speed_wpm": speed,
                "renderer": _espeak_version(binary),
                "command": f"espeak-ng -v {voice} -s {speed} -w WORD.wav WORD", "words": entries}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m recipes.synthetic.render_wordbank", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=WORDBANK_DIR)
    p.add_argument("--voice", default="en-us")
    p.add_argument("--speed", type=int, default=150, help="words per minute")
    args = p.parse_args(argv)
    try:
        m = render(args.out, args.voice, args.speed)
    except (RuntimeError, ValueError, subprocess.CalledProcessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    total = sum((args.out / w["file"]).stat().st_size for w in m["words"])
    print(f"{len(m['words'])} words, {total / 1e6:.2f} MB in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
