"""Rendering a timeline into a real mp4 (H.264 video + AAC audio) with PyAV's bundled encoders.

Frames are drawn with PIL (shapes, and words in PIL's default font), audio is mixed with numpy.
Encoding is single-threaded with fixed settings, so the same timeline gives the same bytes.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from recipes.synthetic.timeline import COLOURS, SOUNDS, Timeline
from recipes.synthetic.wordbank import WordBank

VIDEO_OPTIONS = {"crf": "26", "preset": "veryfast", "threads": "1"}
GOP_FRAMES = 20                 # a key frame every 2 s keeps seeking cheap
AUDIO_BITRATE = 32000
AUDIO_FRAME = 1024
FADE_S = 0.01


@lru_cache(maxsize=32)
def _font(px: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(px)


def _polygon(shape: str, x: float, y: float, r: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        angles, radii = [90, 210, 330], [r] * 3
    elif shape == "diamond":
        angles, radii = [0, 90, 180, 270], [r * 0.8, r, r * 0.8, r]
    elif shape == "hexagon":
        angles, radii = list(range(0, 360, 60)), [r] * 6
    elif shape == "star":
        angles, radii = list(range(90, 450, 36)), [r if i % 2 == 0 else r * 0.45 for i in range(10)]
    else:
        raise ValueError(f"no polygon for shape {shape!r}")
    return [(x + q * math.cos(math.radians(a)), y - q * math.sin(math.radians(a))) for a, q in zip(angles, radii)]


def object_place(timeline: Timeline, e, index: int) -> tuple[float, float] | None:
    """Where visual event `e` is centred in frame `index` (pixels), or None when it is not on screen."""
    f0, f1 = round(e.t0 * timeline.fps), round(e.t1 * timeline.fps)
    if not f0 <= index < f1:
        return None
    u = (index - f0) / max(1, f1 - f0 - 1)
    p = e.position
    return ((p["x0"] + u * (p["x1"] - p["x0"])) * timeline.width, (p["y0"] + u * (p["y1"] - p["y0"])) * timeline.height)


def object_box(timeline: Timeline, e, index: int) -> tuple[float, float, float, float] | None:
    """The pixel box (left, top, right, bottom) visual event `e` is drawn in at frame `index`, or None."""
    at = object_place(timeline, e, index)
    if at is None:
        return None
    x, y = at
    if e.kind in ("word", "flash"):
        left, top, right, bottom = _font(max(8, round(e.size * timeline.height))).getbbox(e.word, anchor="mm")
        return (x + left, y + top, x + right, y + bottom)
    r = e.size * timeline.height / 2
    return (x - r, y - r, x + r, y + r)


def draw_frame(timeline: Timeline, index: int) -> Image.Image:
    """Frame `index` (time index / fps): the background and every object on screen, later ones on top."""
    img = Image.new("RGB", (timeline.width, timeline.height), timeline.background)
    draw = ImageDraw.Draw(img)
    for e in timeline.visual:
        at = object_place(timeline, e, index)
        if at is None:
            continue
        x, y = at
        colour = COLOURS[e.colour]
        if e.kind in ("word", "flash"):
            draw.text((x, y), e.word, fill=colour, font=_font(max(8, round(e.size * timeline.height))), anchor="mm")
            continue
        r = e.size * timeline.height / 2
        if e.shape == "circle":
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
        elif e.shape == "square":
            draw.rectangle((x - r * 0.85, y - r * 0.85, x + r * 0.85, y + r * 0.85), fill=colour)
        else:
            draw.polygon(_polygon(e.shape, x, y, r), fill=colour)
    return img


def synthesize_sound(label: str, rng: np.random.Generator, sr: int) -> np.ndarray:
    """One sound of the catalogue (timeline.SOUNDS), peak 1, with short fades."""
    kind, seconds = SOUNDS[label]
    n = round(seconds * sr)
    t = np.arange(n) / sr
    if label in ("a low beep", "a high beep"):
        x = np.sin(2 * np.pi * (330 if label == "a low beep" else 1320) * t)
    elif label in ("a rising sweep", "a falling sweep"):
        f0, f1 = (300, 1500) if label == "a rising sweep" else (1500, 300)
        x = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * seconds)))
    elif label == "a burst of white noise":
        x = rng.uniform(-1, 1, n)
    elif label == "a low rumble":        # noise through a 20 ms moving average: low-passed
        x = np.convolve(rng.uniform(-1, 1, n), np.ones(sr // 50) / (sr // 50), mode="same")
    elif label == "a hiss":              # first difference of noise: high-passed
        x = np.diff(rng.uniform(-1, 1, n + 1))
    elif label == "a click train":
        x = np.zeros(n)
        for k in range(0, n, sr // 12):
            x[k:k + 24] = np.hanning(24)[: n - k]
    elif label == "a bell":              # inharmonic partials, decaying
        x = sum(a * np.sin(2 * np.pi * 880 * m * t) for a, m in ((1, 1), (0.6, 2.76), (0.4, 5.4))) * np.exp(-4 * t)
    elif label == "a plucked string":    # Karplus-Strong at 220 Hz
        period = sr // 220
        x = np.zeros(n + period)
        x[:period + 1] = rng.uniform(-1, 1, period + 1)
        for k in range(period + 1, n, period):   # a period at a time: each sample averages two a period back
            m = min(period, n - k)
            x[k:k + m] = 0.498 * (x[k - period:k - period + m] + x[k - period - 1:k - period - 1 + m])
        x = x[:n]
    elif label == "a chord":             # C major triad with two harmonics
        x = sum(np.sin(2 * np.pi * f * m * t) / m for f in (261.6, 329.6, 392.0) for m in (1, 2, 3)) * np.exp(-1.5 * t)
    elif label == "a drum hit":          # a low sine falling in pitch
        x = np.sin(2 * np.pi * (150 * t - 45 * t ** 2 / seconds)) * np.exp(-9 * t)
    else:
        raise ValueError(f"no synthesizer for sound {label!r} ({kind})")
    x = x / max(1e-9, np.abs(x).max())
    fade = min(n // 2, round(FADE_S * sr))
    ramp = np.linspace(0, 1, fade)
    x[:fade] *= ramp
    x[n - fade:] *= ramp[::-1]
    return x


def mix_audio(timeline: Timeline, bank: WordBank, rng: np.random.Generator) -> np.ndarray:
    """The clip's audio track: every audio event at its start sample, scaled to its gain (float32)."""
    sr = timeline.sample_rate
    if bank.sample_rate != sr:
        raise ValueError(f"the word bank is {bank.sample_rate} Hz, the clip {sr} Hz")
    track = np.zeros(round(timeline.duration * sr), dtype=np.float64)
    for e in timeline.audio:
        x = bank.audio(e.word) / max(1e-9, np.abs(bank.audio(e.word)).max()) if e.kind == "speech" \
            else synthesize_sound(e.label, rng, sr)
        start = round(e.t0 * sr)
        x = x[: max(0, len(track) - start)]
        track[start:start + len(x)] += e.gain * x
    return np.clip(track, -1, 1).astype(np.float32)


def write_clip(path: Path, timeline: Timeline, audio: np.ndarray) -> None:
    """Encode the frames of `timeline` and `audio` into an mp4 at `path`."""
    n_frames = round(timeline.duration * timeline.fps)
    with av.open(str(path), "w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=timeline.fps, options=dict(VIDEO_OPTIONS))
        vs.width, vs.height, vs.pix_fmt = timeline.width, timeline.height, "yuv420p"
        vs.codec_context.gop_size = GOP_FRAMES
        aus = out.add_stream("aac", rate=timeline.sample_rate, layout="mono")
        aus.bit_rate = AUDIO_BITRATE
        per_frame = timeline.sample_rate // timeline.fps
        pos = 0
        for i in range(n_frames):
            frame = av.VideoFrame.from_image(draw_frame(timeline, i))
            frame.pts = i
            out.mux(vs.encode(frame))
            # audio up to the end of this frame, in encoder-sized frames
            while pos + AUDIO_FRAME <= min(len(audio), (i + 1) * per_frame) or (i == n_frames - 1 and pos < len(audio)):
                chunk = audio[pos:pos + AUDIO_FRAME]
                af = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
                af.sample_rate, af.pts = timeline.sample_rate, pos
                out.mux(aus.encode(af))
                pos += len(chunk)
        out.mux(vs.encode(None))
        out.mux(aus.encode(None))
