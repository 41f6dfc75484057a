"""Small media files with known content, written with PyAV / PIL for the media tests.

Video frames carry their own index: the top half is grey `frame_grey(i)`, the bottom half has
the colour of the second the frame falls in (`SECOND_COLOURS`). Audio is a sum of sines.
"""

from __future__ import annotations

import io
import struct
import zlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

SECOND_COLOURS = [(220, 30, 30), (30, 200, 40), (40, 60, 220), (230, 220, 40)]


def frame_grey(i: int) -> int:
    return 16 + 4 * (i % 56)          # 16..236, 4 apart: neighbours stay distinguishable


def frame_image(i: int, t: float, width: int, height: int) -> np.ndarray:
    img = np.empty((height, width, 3), np.uint8)
    img[: height // 2] = frame_grey(i)
    img[height // 2:] = SECOND_COLOURS[int(t) % len(SECOND_COLOURS)]
    return img


def tones(t: np.ndarray, parts) -> np.ndarray:
    """sum of amplitude * sin(2 pi f t) over parts [(f, amplitude), ...]"""
    return sum(a * np.sin(2 * np.pi * f * t) for f, a in parts)


def _audio_stream(container, codec, rate, layout, options=None):
    s = container.add_stream(codec, rate=rate, options=options or {})
    s.layout = layout
    return s


def _encode_audio(container, stream, signal: np.ndarray, rate: int, fmt: str = "fltp", start: int = 0):
    """signal [channels, n] float in [-1, 1], from sample `start`; fed in the encoder's frame size."""
    cc = stream.codec_context
    size = cc.frame_size or 1024
    layout = cc.layout.name
    if fmt == "s16":
        data = np.round(np.clip(signal, -1, 1) * 32767).astype(np.int16)
    elif fmt == "s32":
        data = np.round(np.clip(signal, -1, 1) * 2147483647).astype(np.int32)
    else:
        data = signal.astype(np.float32)
    for i in range(0, data.shape[1], size):
        block = data[:, i:i + size]
        packed = not fmt.endswith("p")
        arr = block.T.reshape(1, -1) if packed else block
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(arr), format=fmt, layout=layout)
        frame.sample_rate = rate
        frame.pts = start + i
        frame.time_base = Fraction(1, rate)
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


AUDIO_CODECS = {   # extension -> (codec, sample format fed to the encoder, encoder options)
    ".wav": ("pcm_s16le", "s16", None),
    ".flac": ("flac", "s16", None),
    ".mp3": ("mp3", "fltp", None),
    ".ogg": ("libopus", "flt", None),     # ffmpeg's own Vorbis encoder is experimental and lossy
                                          # beyond use; the shared files cover Vorbis decoding
    ".opus": ("libopus", "flt", None),
    ".m4a": ("aac", "fltp", None),
}


def write_audio(path: Path, signal: np.ndarray, rate: int) -> Path:
    """signal [channels, n] in [-1, 1] -> an audio file whose codec the extension picks."""
    codec, fmt, options = AUDIO_CODECS[path.suffix]
    layout = {1: "mono", 2: "stereo"}[signal.shape[0]]
    with av.open(str(path), "w") as c:
        s = _audio_stream(c, codec, rate, layout, options)
        _encode_audio(c, s, signal, rate, fmt)
    return path


VIDEO_FORMATS = {   # extension -> (video codec, audio codec, audio sample format, audio rate, options)
    ".mp4": ("h264", "aac", "fltp", 44100, None),
    ".webm": ("libvpx-vp9", "libopus", "flt", 48000, {"deadline": "realtime", "cpu-used": "8"}),
    ".mkv": ("h264", "mp3", "fltp", 22050, None),
    ".mov": ("mpeg4", "pcm_s16le", "s16", 16000, None),
}


def write_video(path: Path, *, seconds: float = 2.0, fps: int = 25, width: int = 320, height: int = 240,
                pts_ms: list[int] | None = None, audio=((440.0, 0.5),), audio_channels: int = 1,
                audio_first: bool = False, audio_start: float = 0.0) -> Path:
    """A video (codecs chosen by extension) whose frame i shows `frame_image(i, t)`. `pts_ms`
    gives each frame's time in ms (variable frame rate); otherwise frames are 1/fps apart.
    `audio`: sines of the audio track (None: no audio track), starting at `audio_start` s;
    `audio_first` adds it as stream 0."""
    vcodec, acodec, afmt, rate, options = VIDEO_FORMATS[path.suffix]
    times_ms = pts_ms if pts_ms is not None else [round(1000 * i / fps) for i in range(int(seconds * fps))]
    with av.open(str(path), "w") as c:
        if audio is not None and audio_first:
            a = _audio_stream(c, acodec, rate, "mono" if audio_channels == 1 else "stereo")
        v = c.add_stream(vcodec, rate=fps, options=options or {})
        v.width, v.height, v.pix_fmt = width, height, "yuv420p"
        v.bit_rate = 4_000_000
        v.codec_context.time_base = Fraction(1, 1000)
        if pts_ms is not None:
            v.time_base = Fraction(1, 1000)
        if audio is not None and not audio_first:
            a = _audio_stream(c, acodec, rate, "mono" if audio_channels == 1 else "stereo")
        for i, ms in enumerate(times_ms):
            frame = av.VideoFrame.from_ndarray(frame_image(i, ms / 1000, width, height), format="rgb24")
            frame.pts, frame.time_base = ms, Fraction(1, 1000)
            c.mux(v.encode(frame))
        c.mux(v.encode(None))
        if audio is not None:
            n = round((times_ms[-1] / 1000 + 1 / fps - audio_start) * rate)
            sig = tones(np.arange(n) / rate, audio)
            _encode_audio(c, a, np.tile(sig, (audio_channels, 1)), rate, afmt, round(audio_start * rate))
    return path


def write_mp3_with_cover(path: Path, seconds: float = 1.0, rate: int = 44100) -> Path:
    """An MP3 with a JPEG cover picture (a video stream marked attached_pic), as music files have."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (255, 0, 0)).save(buf, "JPEG")
    with av.open(str(path), "w") as c:
        a = _audio_stream(c, "mp3", rate, "mono")
        v = c.add_stream("mjpeg")
        v.width, v.height, v.pix_fmt = 64, 64, "yuvj420p"
        v.disposition = av.stream.Disposition.attached_pic
        packet = av.Packet(buf.getvalue())
        packet.stream, packet.pts, packet.dts, packet.time_base = v, 0, 0, Fraction(1, 90000)
        c.mux(packet)
        _encode_audio(c, a, tones(np.arange(round(seconds * rate)) / rate, [(440.0, 0.5)])[None], rate)
    return path


def write_images(folder: Path) -> dict[str, tuple[Path, np.ndarray]]:
    """name -> (path, the RGB pixels it should decode to); lossy formats hold flat colours."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    out = {}

    def save(name, img, expected, **kw):
        img.save(folder / name, **kw)
        out[name] = (folder / name, expected)

    save("rgb.png", Image.fromarray(noise), noise)
    rgba = np.concatenate([noise, rng.integers(0, 256, (24, 40, 1), dtype=np.uint8)], axis=2)
    save("rgba.png", Image.fromarray(rgba, "RGBA"), noise)                # alpha dropped
    grey = noise[..., 0]
    save("grey.png", Image.fromarray(grey, "L"), np.repeat(grey[..., None], 3, axis=2))
    pal = Image.fromarray(noise).quantize(16)
    save("palette.png", pal, np.array(pal.convert("RGB")))
    save("lossless.webp", Image.fromarray(noise), noise, lossless=True)
    flat = np.zeros((64, 64, 3), np.uint8)        # halves on 16-pixel block boundaries
    flat[:32], flat[32:] = (200, 40, 40), (30, 90, 210)
    save("flat.jpg", Image.fromarray(flat), flat, quality=95)
    save("flat.webp", Image.fromarray(flat), flat, quality=90)
    first, second = np.full((20, 30, 3), (250, 0, 0), np.uint8), np.full((20, 30, 3), (0, 0, 250), np.uint8)
    Image.fromarray(first).save(folder / "anim.gif", save_all=True,
                                append_images=[Image.fromarray(second)], duration=100, loop=0)
    out["anim.gif"] = (folder / "anim.gif", first)
    # EXIF orientation 6 (rotate 90 clockwise to view): decoded upright, height and width swap
    exif = Image.Exif()
    exif[0x0112] = 6
    tall = np.zeros((32, 64, 3), np.uint8)
    tall[:, :32] = (240, 240, 240)
    save("rotated.jpg", Image.fromarray(tall), np.ascontiguousarray(np.rot90(tall, k=-1)), exif=exif, quality=95)
    return out


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims `width` x `height` and holds no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def wav_bytes(data: bytes, *, format_tag: int = 1, channels: int = 1, rate: int = 16000,
              bits: int = 16, declared: int | None = None) -> bytes:
    """A RIFF/WAVE file around `data`; `declared` overrides the data chunk's size field."""
    fmt = struct.pack("<HHIIHH", format_tag, channels, rate, rate * channels * bits // 8,
                      channels * bits // 8, bits)
    size = len(data) if declared is None else declared
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", size) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body
