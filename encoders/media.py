"""Media decoding: images, audio and video files to tensors, on one media clock.

- Images (jpg, png, webp, gif first frame, bmp, tiff): PIL, size checked from the header before
  decoding, EXIF orientation applied, converted to RGB (as transformers' `load_image` does).
- Audio (any container/codec ffmpeg reads; also the audio track of a video): PyAV decodes, its
  AudioResampler (libswresample) converts to float32 at the target rate keeping the channels,
  and mono is the mean of the channels; a track is cut at the length its container declares
  (the last codec frame's padding). decord is not used for audio: its stereo output is corrupt
  and it ignores Opus pre-skip.
- Video: frame times are the container's presentation timestamps (packets, no decoding), so
  variable frame rates are exact. Only the sampled frames are decoded: decord when it can
  (it seeks to keyframes), PyAV when decord cannot open or decode the file (AV1, some VP9);
  both give the same RGB uint8 pixels.

Media clock: time 0 is the container's start time. Frame times are `pts * time_base - start`;
audio sample k lies at k / sample_rate, so an audio track that begins after the start is
preceded by silence. Every failure is a `MediaError` naming the file and the reason.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")   # PIL formats taken as images
MAX_FRAME_PIXELS = 64_000_000        # per image or video frame; headers above this are refused
MAX_CLIP_BYTES = 8 << 30             # a sampled clip larger than this is refused before decoding
_TRUNCATION_SLACK = (0.1, 0.01)      # media may end this much (s, fraction) before its declared end


class MediaError(ValueError):
    """A media file that cannot be used: the message is "<path>: <reason>"."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason

    def __reduce__(self):
        return MediaError, (self.path, self.reason)


@dataclass
class MediaInfo:
    path: str
    kind: str                    # 'audio' | 'video' | 'image'
    duration: float | None       # seconds (container duration; None for images)
    has_audio: bool
    has_video: bool
    width: int | None
    height: int | None
    num_frames: int | None       # video frames present in the file (packets counted)
    avg_fps: float | None
    video_codec: str | None      # for images: the image format ('png', 'jpeg', ...)
    audio_codec: str | None
    sample_rate: int | None      # native rate of the audio track
    channels: int | None


@dataclass
class VideoClip:
    frames: torch.Tensor         # uint8 [T, H, W, 3] RGB
    indices: list[int]           # sampled frame indices (presentation order)
    times: list[float]           # their container timestamps, seconds on the media clock
    avg_fps: float               # the container's average rate (the reference's `metadata.fps`)
    total_frames: int
    duration: float              # end of the last frame, seconds on the media clock


# ---- opening files and turning library errors into MediaError -------------------------------------

def _check_file(path) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MediaError(path, "file not found")
    if not os.path.isfile(path):
        raise MediaError(path, "not a regular file")
    if os.path.getsize(path) == 0:
        raise MediaError(path, "file is empty (0 bytes)")
    return path


@contextmanager
def _decoding(path, what: str):
    """Any library error inside becomes a MediaError; ours pass through."""
    try:
        yield
    except (MediaError, MemoryError):
        raise
    except Exception as e:
        raise MediaError(path, f"cannot decode {what}: the file is truncated or corrupt "
                               f"({type(e).__name__}: {e})") from e


def _open_container(path) -> av.container.InputContainer:
    try:
        c = av.open(path, metadata_errors="ignore")
    except av.error.InvalidDataError as e:
        raise MediaError(path, "not a media file ffmpeg can read (unknown format or corrupt data)") from e
    except Exception as e:
        raise MediaError(path, f"cannot open ({type(e).__name__}: {e})") from e
    name = c.format.name
    if name in ("image2", "gif") or name.endswith("_pipe"):    # ffmpeg took it for an image by its name
        c.close()
        raise MediaError(path, "not a readable image: corrupt, or not the image its name says")
    return c


def _truncated(declared: float, got: float) -> bool:
    return declared - got > _TRUNCATION_SLACK[0] + _TRUNCATION_SLACK[1] * declared


def _open_image(path):
    """The image, opened lazily (header only), or None when PIL does not take it for an image."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)   # we check sizes ourselves
            return Image.open(path, formats=IMAGE_FORMATS)
    except UnidentifiedImageError:
        return None
    except Image.DecompressionBombError as e:
        raise MediaError(path, f"image dimensions are absurd ({e})") from e
    except Exception as e:
        raise MediaError(path, f"cannot read the image header ({type(e).__name__}: {e})") from e


def _stream(container, kind: str):
    """First stream of `kind` ('audio' | 'video'); cover art (attached pictures) is not video."""
    for s in container.streams:
        if s.type == kind and not (s.disposition & av.stream.Disposition.attached_pic):
            return s
    return None


def _require_stream(path, container, kind: str, hint: str):
    s = _stream(container, kind)
    if s is None:
        raise MediaError(path, f"has no {kind} stream{hint}")
    if s.codec_context is None:
        raise MediaError(path, f"unsupported {kind} codec (ffmpeg has no decoder for it); "
                               "re-encode it (e.g. h264/aac)")
    return s


def _origin(container) -> Fraction:
    """The media clock's zero, in seconds: the container's start time."""
    return Fraction(container.start_time or 0, av.time_base)


def _codec_name(stream) -> str | None:
    cc = stream.codec_context if stream is not None else None
    return cc.codec.canonical_name if cc is not None else None


# ---- video index: timestamps of every frame, from packets ---------------------------------------

@dataclass
class _VideoIndex:
    pts: list[int]               # presentation timestamps, sorted, in `time_base` units
    times: list[float]           # seconds on the media clock
    avg_fps: float
    duration: float
    width: int
    height: int


def _index_video(path, container, stream) -> _VideoIndex:
    """Demux (no decoding) the video stream's packets: frame count and presentation times.
    Audio packets are read too, only to see where the media ends (truncated files)."""
    tb = stream.time_base
    cc = stream.codec_context
    if cc.width <= 0 or cc.height <= 0:
        raise MediaError(path, "the video stream declares no frame size")
    pts, last_duration = [], 0
    ends = {}                                 # stream index -> largest pts + duration
    streams = [stream] + [s for s in container.streams if s.type == "audio"]
    with _decoding(path, "the video packets"):
        for packet in container.demux(streams):
            if packet.size == 0:
                continue
            t = packet.pts if packet.pts is not None else packet.dts
            if t is not None:
                i = packet.stream_index
                ends[i] = max(ends.get(i, t), t + (packet.duration or 0))
            if packet.stream_index != stream.index or packet.is_discard:
                continue
            if t is None:
                raise MediaError(path, "video frames carry no timestamps; remux it into mp4 or mkv")
            pts.append(t)
            last_duration = packet.duration or 0
    if not pts:
        raise MediaError(path, "the video stream has no frames")
    if stream.frames and len(pts) < stream.frames:
        raise MediaError(path, f"the file is truncated: its index lists {stream.frames} video frames "
                               f"but only {len(pts)} are present")
    origin = _origin(container)
    if container.duration and ends:
        declared = container.duration / av.time_base
        end = max(float(e * container.streams[i].time_base - origin) for i, e in ends.items())
        if _truncated(declared, end):
            raise MediaError(path, f"the file is truncated: it should last {declared:.2f} s "
                                   f"but its streams end at {end:.2f} s")
    pts.sort()
    times = [float(p * tb - origin) for p in pts]
    rate = stream.average_rate
    span = times[-1] - times[0]
    avg_fps = float(rate) if rate else (len(pts) - 1) / span if span > 0 else 1.0
    frame_dur = float(last_duration * tb) if last_duration else 1.0 / avg_fps
    return _VideoIndex(pts, times, avg_fps, times[-1] + frame_dur, cc.width, cc.height)


def _load_video_index(path) -> _VideoIndex:
    path = _check_file(path)
    if (img := _open_image(path)) is not None:
        img.close()
        raise MediaError(path, "is an image, not a video; use load_image")
    with _open_container(path) as c:
        v = _require_stream(path, c, "video", " (audio only?); use load_audio")
        return _index_video(path, c, v)


# ---- probe ---------------------------------------------------------------------------------------

def probe(path) -> MediaInfo:
    """What the file holds. Counts video packets (reads the file, decodes nothing)."""
    path = _check_file(path)
    if (img := _open_image(path)) is not None:
        with img:
            w, h = img.size
            return MediaInfo(path, "image", None, False, False, w, h, None, None,
                             img.format.lower(), None, None, None)
    with _open_container(path) as c:
        v, a = _stream(c, "video"), _stream(c, "audio")
        if v is None and a is None:
            raise MediaError(path, "has no audio or video stream")
        for s in (v, a):
            if s is not None and s.codec_context is None:
                raise MediaError(path, f"unsupported {s.type} codec (ffmpeg has no decoder for it)")
        index = _index_video(path, c, v) if v is not None else None
        duration = c.duration / av.time_base if c.duration else None
        if duration is None:
            ends = [index.duration] if index else []
            if a is not None and a.duration:
                ends.append(float(((a.start_time or 0) + a.duration) * a.time_base - _origin(c)))
            duration = max(ends) if ends else None
        acc = a.codec_context if a is not None else None
        return MediaInfo(
            path, "video" if v is not None else "audio", duration, a is not None, v is not None,
            index.width if index else None, index.height if index else None,
            len(index.pts) if index else None, index.avg_fps if index else None,
            _codec_name(v), _codec_name(a),
            acc.sample_rate if acc else None, acc.channels if acc else None)


# ---- images --------------------------------------------------------------------------------------

def load_image(path, max_pixels: int = MAX_FRAME_PIXELS) -> torch.Tensor:
    """uint8 [H, W, 3] RGB. Dimensions are checked from the header before decoding; a GIF or an
    animated WebP gives its first frame; EXIF orientation is applied; RGBA, palette and grey
    images are converted to RGB as PIL's `convert("RGB")` does (alpha dropped)."""
    path = _check_file(path)
    img = _open_image(path)
    if img is None:
        raise MediaError(path, f"not an image file (readable formats: {', '.join(IMAGE_FORMATS).lower()})")
    with img:
        w, h = img.size
        if w <= 0 or h <= 0 or w * h > max_pixels:
            raise MediaError(path, f"image is {w}x{h} pixels, over the limit of {max_pixels} pixels")
        with _decoding(path, "the image"), warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            rgb = ImageOps.exif_transpose(img).convert("RGB")
            return torch.from_numpy(np.array(rgb, dtype=np.uint8))


# ---- audio ---------------------------------------------------------------------------------------

def _check_rate(path, sample_rate) -> int:
    if not isinstance(sample_rate, (int, np.integer)) or not 0 < sample_rate <= 1_000_000:
        raise MediaError(path, f"sample_rate must be a positive integer, got {sample_rate!r}")
    return int(sample_rate)


def _sample_window(path, sample_rate, start, end) -> tuple[int, int | None]:
    """[start, end) seconds -> [k0, k1) sample indices at `sample_rate`."""
    for name, t in (("start", start), ("end", end)):
        if t is not None and not (isinstance(t, (int, float)) and math.isfinite(t) and t >= 0):
            raise MediaError(path, f"{name} must be a finite time >= 0 in seconds, got {t!r}")
    k0 = round(start * sample_rate) if start is not None else 0
    k1 = round(end * sample_rate) if end is not None else None
    if k1 is not None and k1 <= k0:
        raise MediaError(path, f"empty time window: start={start}, end={end}")
    return k0, k1


def _open_audio(path):
    """Open and validate (eagerly, so iterators fail at the call): container and audio stream."""
    path = _check_file(path)
    if (img := _open_image(path)) is not None:
        img.close()
        raise MediaError(path, "is an image, it has no audio")
    c = _open_container(path)
    try:
        a = _require_stream(path, c, "audio", "; it cannot give audio")
    except MediaError:
        c.close()
        raise
    return path, c, a


def _audio_blocks(path, container, stream, sample_rate: int, k0: int, k1: int | None) -> Iterator[np.ndarray]:
    """Mono float32 blocks at `sample_rate` covering samples [k0, k1) of the media clock.

    Decodes from the start (no seeking, so a window equals the slice of the whole decode
    exactly); samples before k0 are dropped as they come, so memory stays one block.
    """
    origin = _origin(container)
    declared = None                           # where the container says the track ends
    if stream.duration:
        declared = float((stream.duration + (stream.start_time or 0)) * stream.time_base - origin)
        # Decoders emit whole codec frames; the container trims the last one (encoder padding).
        k_end = round(declared * sample_rate)
        k1 = k_end if k1 is None else min(k1, k_end)
    pos = kept = 0                            # media-clock index of the next sample; samples kept
    native_samples, first_time, native_rate = 0, None, None

    def window(x: np.ndarray):
        nonlocal pos, kept
        lo, hi = max(k0 - pos, 0), len(x) if k1 is None else min(len(x), k1 - pos)
        pos += len(x)
        kept += max(hi - lo, 0)
        return x[lo:hi] if hi > lo else None

    with container, _decoding(path, "the audio"):
        resampler = av.AudioResampler(format="fltp", rate=sample_rate)   # keeps the channel layout
        for frame in container.decode(stream):
            if frame.samples == 0:
                continue
            if first_time is None:
                native_rate = frame.sample_rate
                first_time = float(frame.pts * frame.time_base - origin) if frame.pts is not None else 0.0
                lead = round(first_time * sample_rate)     # a track that starts late: silence first
                while lead > 0:
                    n = min(lead, sample_rate)
                    if (x := window(np.zeros(n, np.float32))) is not None:
                        yield x
                    lead -= n
            native_samples += frame.samples
            for out in resampler.resample(frame):
                if (x := window(out.to_ndarray().mean(axis=0, dtype=np.float32))) is not None:
                    yield x
            if k1 is not None and pos >= k1:
                break
        else:
            for out in resampler.resample(None):
                if (x := window(out.to_ndarray().mean(axis=0, dtype=np.float32))) is not None:
                    yield x
    if native_samples == 0:
        raise MediaError(path, "the audio stream is empty (0 samples)")
    if declared is not None and pos < k1:     # decoded to the end before the declared end
        got = first_time + native_samples / native_rate
        if _truncated(declared, got):
            raise MediaError(path, f"the file is truncated: the audio track should last {declared:.2f} s "
                                   f"but ends at {got:.2f} s")
    if kept == 0:
        raise MediaError(path, f"no audio in the window starting at {k0 / sample_rate:.3f} s "
                               f"(the audio ends at {pos / sample_rate:.3f} s)")


def load_audio(path, sample_rate: int = 16000, start: float | None = None,
               end: float | None = None) -> torch.Tensor:
    """float32 [n] mono at `sample_rate`, samples [start, end) seconds of the media clock.

    Works on audio files and on the audio track of videos. Values are the decoder's: a float
    codec may exceed [-1, 1] slightly."""
    sample_rate = _check_rate(path, sample_rate)
    k0, k1 = _sample_window(path, sample_rate, start, end)
    path, c, a = _open_audio(path)
    blocks = list(_audio_blocks(path, c, a, sample_rate, k0, k1))
    return torch.from_numpy(np.concatenate(blocks))


def iter_audio(path, chunk_seconds: float, sample_rate: int = 16000, start: float | None = None,
               end: float | None = None) -> Iterator[torch.Tensor]:
    """Chunks of `chunk_seconds` (the last may be shorter) of what `load_audio` returns, with
    memory bounded by one chunk. The file is opened and checked at the call."""
    sample_rate = _check_rate(path, sample_rate)
    if not (isinstance(chunk_seconds, (int, float)) and math.isfinite(chunk_seconds)
            and chunk_seconds * sample_rate >= 1):
        raise MediaError(path, f"chunk_seconds must be at least one sample long, got {chunk_seconds!r}")
    size = round(chunk_seconds * sample_rate)
    k0, k1 = _sample_window(path, sample_rate, start, end)
    path, c, a = _open_audio(path)

    def chunks():
        buf, have = [], 0
        for x in _audio_blocks(path, c, a, sample_rate, k0, k1):
            buf.append(x)
            have += len(x)
            if have >= size:
                joined = np.concatenate(buf)
                for i in range(0, len(joined) - size + 1, size):
                    yield torch.from_numpy(joined[i:i + size].copy())
                rest = joined[len(joined) - len(joined) % size:]
                buf, have = [rest], len(rest)
        if have:
            yield torch.from_numpy(np.concatenate(buf))

    return chunks()


# ---- video ---------------------------------------------------------------------------------------

def sample_indices(total_frames: int, video_fps: float, *, fps: float | None = None,
                   num_frames: int | None = None, max_frames: int | None = None) -> list[int]:
    """Frame indices as transformers' video processors sample them (`default_sample_indices_fn`):
    `num_frames=n` -> `arange(n) * total // n`; `fps=f` -> `n = max(1, int(total / video_fps * f))`
    then the same rule; neither -> every frame. `max_frames` caps n before the rule, so a capped
    clip still spans the whole video. Asking `num_frames` beyond the video's frames is an error
    (as there); an `fps` above the video's gives every frame (where the reference raises)."""
    if fps is not None and num_frames is not None:
        raise ValueError("fps and num_frames are mutually exclusive; pass one")
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be positive, got {fps!r}")
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames!r}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, got {max_frames!r}")
    if fps is not None:
        num_frames = min(max(1, int(total_frames / video_fps * fps)), total_frames)
    n = total_frames if num_frames is None else num_frames
    if max_frames is not None:
        n = min(n, max_frames)
    if n > total_frames:
        raise ValueError(f"asked for {n} frames but the video has {total_frames}; ask for fewer")
    return [i * total_frames // n for i in range(n)]


def video_frame_times(path) -> list[float]:
    """Presentation time (seconds, media clock) of every video frame, from the container's
    packets: exact for variable frame rates; nothing is decoded."""
    return _load_video_index(path).times


def _decord():
    try:
        import decord
    except ImportError:
        return None
    return decord


def _frames_decord(path, indices, total: int, batch: int):
    """decord reader over `indices` as (index, HxWx3 uint8), or None if decord cannot take the file."""
    decord = _decord()
    if decord is None:
        return None
    try:
        vr = decord.VideoReader(path, ctx=decord.cpu(0))
    except Exception:            # e.g. AV1, which its bundled ffmpeg cannot decode
        return None
    if len(vr) != total:         # it counts frames differently: trust the container's packets
        return None

    def read():
        for i in range(0, len(indices), batch):
            chunk = indices[i:i + batch]
            arr = vr.get_batch(chunk).asnumpy()
            yield from zip(chunk, arr)

    return read()


def _frames_av(path, indices, index: _VideoIndex):
    """PyAV reader: decodes in order from the start and keeps the wanted frames (matched by pts)."""
    if not indices:
        return
    order = {p: k for k, p in enumerate(index.pts)}     # pts -> presentation index
    wanted, last, found, k = set(indices), max(indices), set(), -1
    with _open_container(path) as c:
        v = _stream(c, "video")
        v.thread_type = "AUTO"
        for frame in c.decode(v):
            k = order.get(frame.pts, k + 1)             # a frame without a known pts follows the last
            if k in wanted and k not in found:
                found.add(k)
                yield k, frame.to_ndarray(format="rgb24")
            if k >= last:
                break
    missing = sorted(wanted - found)
    if missing:
        raise MediaError(path, f"could not decode video frames {missing[:5]}"
                               f"{'...' if len(missing) > 5 else ''}: the file is truncated or corrupt")


def _read_frames(path, indices: list[int], index: _VideoIndex, backend: str | None, batch: int = 8):
    """(index, uint8 HxWx3) for each wanted index in order, from decord or PyAV."""
    if backend not in (None, "decord", "av"):
        raise MediaError(path, f"unknown video backend {backend!r} (use 'decord', 'av' or None)")
    done = 0
    if backend in (None, "decord"):
        frames = _frames_decord(path, indices, len(index.pts), batch)
        try:
            if frames is None:
                raise RuntimeError("decord cannot open it")
            for item in frames:
                yield item
                done += 1
            return
        except Exception as e:               # decord fails on some valid files (AV1, some VP9)
            if backend == "decord":
                raise MediaError(path, f"decord cannot decode this video ({type(e).__name__}: {e}); "
                                       "use backend='av' or None") from e
    with _decoding(path, "the video"):
        yield from _frames_av(path, indices[done:], index)


def _check_frame_size(path, index: _VideoIndex, max_pixels: int):
    if index.width <= 0 or index.height <= 0 or index.width * index.height > max_pixels:
        raise MediaError(path, f"video frames are {index.width}x{index.height} pixels, "
                               f"over the limit of {max_pixels} pixels")


def _indices(path, index: _VideoIndex, **kw) -> list[int]:
    try:
        return sample_indices(len(index.pts), index.avg_fps, **kw)
    except ValueError as e:
        raise MediaError(path, str(e)) from None


def sample_video(path, *, fps: float | None = None, num_frames: int | None = None,
                 max_frames: int | None = None, max_pixels: int = MAX_FRAME_PIXELS,
                 max_bytes: int = MAX_CLIP_BYTES, backend: str | None = None) -> VideoClip:
    """Decode only the frames `sample_indices` picks (the reference's rule); their `times` are
    the container timestamps. `backend`: None (decord, PyAV when decord cannot), 'decord' or 'av'."""
    index = _load_video_index(path)
    path = os.fspath(path)
    _check_frame_size(path, index, max_pixels)
    idx = _indices(path, index, fps=fps, num_frames=num_frames, max_frames=max_frames)
    size = len(idx) * index.height * index.width * 3
    if size > max_bytes:
        raise MediaError(path, f"{len(idx)} frames of {index.width}x{index.height} need {size / 2**30:.1f} GiB, "
                               f"over max_bytes; lower fps / max_frames or use iter_video_frames")
    frames = torch.empty(len(idx), index.height, index.width, 3, dtype=torch.uint8)
    got = 0
    for i, arr in _read_frames(path, idx, index, backend):
        if arr.shape != frames.shape[1:]:
            raise MediaError(path, f"frame {i} is {arr.shape[1]}x{arr.shape[0]}, the stream declares "
                                   f"{index.width}x{index.height}; resolution changes are not supported")
        frames[got] = torch.from_numpy(arr)
        got += 1
    if got != len(idx):
        raise MediaError(path, f"only {got} of {len(idx)} sampled frames could be decoded")
    return VideoClip(frames, idx, [index.times[i] for i in idx], index.avg_fps, len(index.pts), index.duration)


def iter_video_frames(path, *, fps: float, max_frames: int | None = None,
                      max_pixels: int = MAX_FRAME_PIXELS,
                      backend: str | None = None) -> Iterator[tuple[float, torch.Tensor]]:
    """(time, uint8 [H, W, 3]) one at a time: the frames `sample_video(path, fps=fps,
    max_frames=max_frames)` returns, for long videos. The file is opened and checked at the call."""
    index = _load_video_index(path)
    path = os.fspath(path)
    _check_frame_size(path, index, max_pixels)
    idx = _indices(path, index, fps=fps, max_frames=max_frames)

    def frames():
        for i, arr in _read_frames(path, idx, index, backend, batch=1):
            yield index.times[i], torch.from_numpy(np.ascontiguousarray(arr))

    return frames()
