"""encoders.media: every shared media file and small generated ones decode with the right
durations, frame times, rates and content; sampling equals transformers' video processor;
stereo becomes the exact mean of its channels; bad input is a MediaError naming the file."""

from __future__ import annotations

import itertools
import pickle
import time
import tracemalloc
import wave
from pathlib import Path

import av
import numpy as np
import pytest
import torch

import media_fixtures as mf
from encoders.media import (MediaError, MediaInfo, VideoClip, iter_audio, iter_video_frames, load_audio,
                            load_image, probe, sample_indices, sample_video, video_frame_times)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "media"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared media folder {SHARED} is absent")
SR = 16000

# From shared/media/MANIFEST.md and the containers: kind, container duration (s), video
# (codec, width, height, frames, average fps), audio (codec, rate, channels, track length in s:
# where it differs from the container, the MANIFEST's per-file notes say so).
VIDEOS = {
    "art-critic.mp4": (13.617, ("h264", 1920, 880, 817, 60.0), ("aac", 48000, 1, 13.613)),
    "retalking_face_1.mp4": (6.133, ("h264", 700, 700, 135, 1350 / 61), ("aac", 44100, 2, 6.107)),
    "big_buck_bunny_0_30.webm": (30.003, ("vp8", 1280, 720, 720, 24.0), ("vorbis", 44100, 2, 30.022)),
    "flipping_a_pancake.mkv": (10.381, ("h264", 426, 240, 310, 30.0), ("opus", 48000, 1, 497651 / 48000)),
    "edge_av1_test_pattern.mp4": (15.04, ("av1", 960, 540, 375, 25.0), ("aac", 32000, 1, 15.04)),
    "edge_world_silent_audio.mp4": (3.233, ("h264", 480, 270, 97, 30.0), ("aac", 48000, 2, 3.23)),
}
AUDIOS = {
    "jfk.flac": (11.0, ("flac", 44100, 2)),
    "stereo_diarization.wav": (5.0, ("pcm_s16le", 16000, 2)),
    "pyannote_sample.wav": (30.0, ("pcm_s16le", 16000, 1)),
    "multilingual.mp3": (59.9, ("mp3", 24000, 1)),    # MANIFEST's 59.95 adds the 46 ms start offset
    "sugar_plum_fairy_kevin_macleod.hq.ogg": (119.876, ("vorbis", 44100, 2)),
}
IMAGES = {"astronaut.png": (512, 512, "png"), "chelsea.png": (451, 300, "png"), "rocket.jpg": (640, 427, "jpeg")}


def shared(name: str) -> Path:
    return SHARED / name


def tone_amplitude(x: np.ndarray, freq: float, rate: int = SR) -> float:
    """Amplitude of the `freq` component (least squares over the middle of the signal)."""
    x = np.asarray(x, np.float64)[len(x) // 8: -len(x) // 8]
    t = np.arange(len(x)) / rate
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)], axis=1)
    coef = np.linalg.lstsq(basis, x, rcond=None)[0]
    return float(np.hypot(*coef))


def wav_channels(path: Path) -> np.ndarray:
    """[channels, n] float64 of a 16-bit WAV, read with the standard library (not ffmpeg)."""
    with wave.open(str(path)) as w:
        data = np.frombuffer(w.readframes(w.getnframes()), np.int16).reshape(-1, w.getnchannels())
    return data.T / 32768.0


def raises_media_error(path, fn, *args, match: str | None = None, **kw) -> MediaError:
    with pytest.raises(MediaError) as info:
        out = fn(path, *args, **kw)
        if hasattr(out, "__next__"):
            list(out)
    assert isinstance(info.value, ValueError)
    assert str(path) in str(info.value), str(info.value)
    if match:
        assert match in str(info.value), str(info.value)
    return info.value


# ---- the shared real-world files -----------------------------------------------------------------

@needs_shared
@pytest.mark.parametrize("name", sorted(VIDEOS))
def test_shared_video_probe_times_and_audio(name):
    duration, (vcodec, w, h, frames, fps), (acodec, rate, channels, audio_len) = VIDEOS[name]
    info = probe(shared(name))
    assert (info.kind, info.has_video, info.has_audio) == ("video", True, True)
    assert info.duration == pytest.approx(duration, abs=2e-3)
    assert (info.video_codec, info.width, info.height, info.num_frames) == (vcodec, w, h, frames)
    assert info.avg_fps == pytest.approx(fps, rel=1e-12)
    assert (info.audio_codec, info.sample_rate, info.channels) == (acodec, rate, channels)

    times = video_frame_times(shared(name))
    assert len(times) == frames and all(b > a for a, b in itertools.pairwise(times))
    if name != "retalking_face_1.mp4":                 # constant frame rate: 1/fps apart (ms rounding)
        assert np.abs(np.diff(times) - 1 / fps).max() < 1.5e-3
        assert times[0] < 4e-3

    audio = load_audio(shared(name))
    assert audio.dtype == torch.float32 and audio.ndim == 1
    assert len(audio) / SR == pytest.approx(audio_len, abs=2e-3)


@needs_shared
@pytest.mark.parametrize("name", sorted(AUDIOS))
def test_shared_audio_probe_and_length(name):
    duration, (codec, rate, channels) = AUDIOS[name]
    info = probe(shared(name))
    assert (info.kind, info.has_video, info.has_audio, info.num_frames) == ("audio", False, True, None)
    assert (info.audio_codec, info.sample_rate, info.channels) == (codec, rate, channels)
    assert info.duration == pytest.approx(duration, abs=2e-3)
    audio = load_audio(shared(name))
    assert len(audio) / SR == pytest.approx(duration, abs=2e-3)
    assert audio.abs().max() > 0.1
    raises_media_error(shared(name), sample_video, num_frames=1, match="no video stream")


@needs_shared
@pytest.mark.parametrize("name", sorted(IMAGES))
def test_shared_images(name):
    w, h, fmt = IMAGES[name]
    info = probe(shared(name))
    assert (info.kind, info.width, info.height, info.video_codec, info.duration) == ("image", w, h, fmt, None)
    img = load_image(shared(name))
    assert img.shape == (h, w, 3) and img.dtype == torch.uint8
    raises_media_error(shared(name), load_audio, match="image")
    raises_media_error(shared(name), sample_video, num_frames=1, match="image")


@needs_shared
def test_stereo_downmix_is_the_exact_mean_of_the_channels():
    # 16-bit stereo at 16 kHz: no resampling, so the mean of L and R read by the wave module
    path = shared("stereo_diarization.wav")
    lr = wav_channels(path)
    ours = load_audio(path).double().numpy()
    assert np.abs(ours - lr.mean(axis=0)).max() == 0.0
    # s32 stereo FLAC at its native rate, against PyAV's own channels
    path = shared("jfk.flac")
    with av.open(str(path)) as c:
        lr = np.concatenate([f.to_ndarray().reshape(-1, 2).T for f in c.decode(audio=0)], axis=1) / 2**31
    ours = load_audio(path, sample_rate=44100).double().numpy()
    assert ours.shape == (lr.shape[1],)
    assert np.abs(ours - lr.mean(axis=0)).max() < 1e-7
    assert np.abs(ours).max() > 0.5                    # swr's 0.7071 (L+R) would peak at 1.108


@needs_shared
def test_silent_track_decodes_to_zeros():
    audio = load_audio(shared("edge_world_silent_audio.mp4"))
    assert len(audio) == round(3.23 * SR) and torch.count_nonzero(audio) == 0


@needs_shared
def test_variable_frame_rate_times_are_the_decoded_pts():
    path = shared("retalking_face_1.mp4")
    with av.open(str(path)) as c:
        decoded = [float(f.pts * f.time_base) for f in c.decode(video=0)]
    times = video_frame_times(path)
    assert times == pytest.approx(decoded, abs=1e-9)
    gaps = np.round(np.diff(times) * 30).astype(int)
    assert (gaps == 1).sum() == 86 and (gaps == 2).sum() == 48      # MANIFEST: 86 x 1/30 s, 48 x 2/30 s
    clip = sample_video(path, fps=2)
    assert clip.times == [times[i] for i in clip.indices]
    assert clip.avg_fps == pytest.approx(1350 / 61) and clip.total_frames == 135
    assert clip.duration == pytest.approx(6.133, abs=1e-3)


@needs_shared
def test_av1_falls_back_to_pyav_and_audio_first_files_work():
    path = shared("edge_av1_test_pattern.mp4")               # stream 0 is audio; decord cannot do AV1
    clip = sample_video(path, num_frames=3)
    assert clip.indices == [0, 125, 250] and clip.times == pytest.approx([0.0, 5.0, 10.0])
    assert clip.frames.shape == (3, 540, 960, 3) and clip.frames.float().std() > 10
    raises_media_error(path, sample_video, num_frames=3, backend="decord", match="decord")
    # the beep at the start of every second lands there on the media clock
    audio = load_audio(path).numpy()
    for k in range(1, 15):
        beep = np.sqrt(np.mean(audio[k * SR: k * SR + SR // 10] ** 2))
        rest = np.sqrt(np.mean(audio[k * SR + SR // 4: k * SR + 3 * SR // 4] ** 2))
        assert beep > 10 * rest + 1e-3, k


@needs_shared
@pytest.mark.parametrize("name,backend", [("flipping_a_pancake.mkv", "decord"),
                                          ("retalking_face_1.mp4", "decord"),
                                          ("edge_world_silent_audio.mp4", "pyav")])
def test_sampling_and_frames_equal_transformers_load_video(name, backend):
    from transformers.video_utils import load_video
    for kw in (dict(fps=2), dict(num_frames=7)):
        ref, meta = load_video(str(shared(name)), backend=backend, **kw)
        clip = sample_video(shared(name), **kw)
        assert clip.indices == meta.frames_indices.tolist(), kw
        assert clip.avg_fps == meta.fps and clip.total_frames == meta.total_num_frames
        assert torch.equal(clip.frames, torch.from_numpy(ref)), kw


@needs_shared
def test_iter_audio_and_windows_equal_load_audio():
    path = shared("multilingual.mp3")
    whole = load_audio(path)
    chunks = list(iter_audio(path, 7.0))
    assert [len(c) for c in chunks[:-1]] == [7 * SR] * (len(chunks) - 1) and 0 < len(chunks[-1]) <= 7 * SR
    assert torch.equal(torch.cat(chunks), whole)
    assert torch.equal(load_audio(path, start=12.3, end=20.05), whole[round(12.3 * SR):round(20.05 * SR)])
    assert torch.equal(load_audio(path, start=55.0), whole[55 * SR:])
    # a window of a resampled stereo track, and streaming from an offset
    path = shared("retalking_face_1.mp4")
    whole = load_audio(path)
    assert torch.equal(load_audio(path, start=1.5, end=4.25), whole[24000:68000])
    assert torch.equal(torch.cat(list(iter_audio(path, 0.5, start=2.0))), whole[32000:])
    raises_media_error(path, load_audio, start=7.0, match="no audio")


@needs_shared
def test_iter_video_frames_equals_sample_video():
    path = shared("flipping_a_pancake.mkv")
    clip = sample_video(path, fps=1.5, max_frames=9)
    got = list(iter_video_frames(path, fps=1.5, max_frames=9))
    assert [t for t, _ in got] == clip.times
    assert torch.equal(torch.stack([f for _, f in got]), clip.frames)


# ---- sampling rule -------------------------------------------------------------------------------

def test_sample_indices_equal_the_reference_video_processor():
    from transformers.models.nemotron_h_omni.video_processing_nemotron_h_omni import (
        NemotronH_Omni_Reasoning_V3VideoProcessor)
    from transformers.video_utils import VideoMetadata
    processor = NemotronH_Omni_Reasoning_V3VideoProcessor()
    checked = 0
    for total, video_fps in [(1, 30.0), (97, 30.0), (135, 1350 / 61), (310, 30.0), (720, 24.0),
                             (817, 60.0), (54000, 29.97), (1000, 23.976)]:
        meta = VideoMetadata(total_num_frames=total, fps=video_fps)
        for kw in [dict(fps=f) for f in (0.1, 0.5, 1, 2, 3.3, 24, 60)] + \
                  [dict(num_frames=n) for n in (1, 2, 7, 16, 128, 1000)] + [{}]:
            try:
                ref = processor.sample_frames(metadata=meta, **kw).tolist()
            except ValueError:           # more frames than the video has
                if "fps" in kw:          # ours: a rate above the video's gives every frame
                    assert sample_indices(total, video_fps, **kw) == list(range(total))
                else:
                    with pytest.raises(ValueError):
                        sample_indices(total, video_fps, **kw)
                continue
            assert sample_indices(total, video_fps, **kw) == ref, (total, video_fps, kw)
            checked += 1
            # max_frames caps the count and keeps the rule: spread over the whole video
            cap = max(1, len(ref) // 3)
            capped = processor.sample_frames(metadata=meta, num_frames=cap).tolist()
            assert sample_indices(total, video_fps, max_frames=cap, **kw) == capped
    assert checked > 60
    with pytest.raises(ValueError):
        sample_indices(100, 25.0, fps=1, num_frames=4)


# ---- generated files: every container, codec and image format ------------------------------------

L_TONE, R_TONE = (440.0, 0.5), (1000.0, 0.3)      # stereo files: L and R hold different sines
VFR_MS = [0, 33, 67, 133, 167, 300, 333, 367, 400, 500, 533, 567, 600, 700, 800, 833, 867, 1000, 1033, 1200]


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("media")
    out = {}
    for ext in mf.AUDIO_CODECS:
        rate = 48000 if ext in (".opus", ".ogg") else 44100
        t = np.arange(2 * rate) / rate
        out["stereo" + ext] = mf.write_audio(root / f"stereo{ext}",
                                             np.stack([mf.tones(t, [L_TONE]), mf.tones(t, [R_TONE])]), rate)
    for ext in mf.VIDEO_FORMATS:
        out["video" + ext] = mf.write_video(root / f"video{ext}")
    out["vfr.mp4"] = mf.write_video(root / "vfr.mp4", pts_ms=VFR_MS)
    out["vfr.mkv"] = mf.write_video(root / "vfr.mkv", pts_ms=VFR_MS)
    out["audio_first.mp4"] = mf.write_video(root / "audio_first.mp4", audio_first=True, audio_channels=2)
    out["silent_film.mp4"] = mf.write_video(root / "silent_film.mp4", audio=None)
    out["late_audio.mkv"] = mf.write_video(root / "late_audio.mkv", audio_start=0.5)
    out["cover.mp3"] = mf.write_mp3_with_cover(root / "cover.mp3")
    out["images"] = mf.write_images(root / "images")
    return out


@pytest.mark.parametrize("ext", list(mf.AUDIO_CODECS))
def test_generated_audio_formats(media, ext):
    path = media["stereo" + ext]
    info = probe(path)
    assert (info.kind, info.channels, info.has_video) == ("audio", 2, False)
    assert info.duration == pytest.approx(2.0, abs=0.01)
    audio = load_audio(path).numpy()
    assert len(audio) / SR == pytest.approx(2.0, abs=0.002)
    lossless = ext in (".wav", ".flac")
    # mono is the mean of the channels: each sine at half its amplitude
    tol = 2e-4 if lossless else 0.02
    assert tone_amplitude(audio, 440) == pytest.approx(0.25, abs=tol)
    assert tone_amplitude(audio, 1000) == pytest.approx(0.15, abs=tol)
    if lossless:        # sample-exact timing: the analytic signal on the 16 kHz grid
        t = np.arange(len(audio)) / SR
        expected = (mf.tones(t, [L_TONE]) + mf.tones(t, [R_TONE])) / 2
        assert np.abs(audio - expected)[400:-400].max() < 2e-4


def test_generated_wav_downmix_exact(media):
    path = media["stereo.wav"]
    ours = load_audio(path, sample_rate=44100).double().numpy()
    assert np.abs(ours - wav_channels(path).mean(axis=0)).max() == 0.0


@pytest.mark.parametrize("ext", list(mf.VIDEO_FORMATS))
def test_generated_video_formats(media, ext):
    path = media["video" + ext]
    vcodec, acodec, _, rate, _ = mf.VIDEO_FORMATS[ext]
    info = probe(path)
    assert (info.kind, info.width, info.height, info.num_frames, info.avg_fps) == ("video", 320, 240, 50, 25.0)
    assert info.video_codec == av.codec.Codec(vcodec, "w").canonical_name
    assert info.audio_codec == av.codec.Codec(acodec, "w").canonical_name and info.sample_rate == rate
    assert video_frame_times(path) == pytest.approx([i / 25 for i in range(50)], abs=1e-6)
    clips = [sample_video(path, num_frames=5, backend=b) for b in (None, "av")]
    for clip in clips:
        assert clip.indices == [0, 10, 20, 30, 40] and clip.times == pytest.approx([0, 0.4, 0.8, 1.2, 1.6])
        assert clip.total_frames == 50 and clip.duration == pytest.approx(2.0)
        for frame, i, t in zip(clip.frames, clip.indices, clip.times):
            top, bottom = frame[20:100, 20:300].float().mean((0, 1)), frame[140:220, 20:300].float().mean((0, 1))
            assert torch.allclose(top, torch.full((3,), float(mf.frame_grey(i))), atol=1.5), (i, top)
            assert torch.allclose(bottom, torch.tensor(mf.SECOND_COLOURS[int(t)], dtype=torch.float), atol=6)
    assert torch.equal(clips[0].frames, clips[1].frames)
    audio = load_audio(path).numpy()                       # audio-in-video
    assert len(audio) / SR == pytest.approx(2.0, abs=0.01)
    assert tone_amplitude(audio, 440) == pytest.approx(0.5, abs=0.04)       # lossy codecs


@pytest.mark.parametrize("name", ["vfr.mp4", "vfr.mkv"])
def test_generated_variable_frame_rate(media, name):
    path = media[name]
    assert video_frame_times(path) == pytest.approx([ms / 1000 for ms in VFR_MS], abs=1e-6)
    info = probe(path)
    assert info.num_frames == len(VFR_MS)
    for backend in ("decord", "av"):
        clip = sample_video(path, num_frames=6, backend=backend)
        assert clip.times == pytest.approx([VFR_MS[i] / 1000 for i in clip.indices], abs=1e-6)
        for frame, i in zip(clip.frames, clip.indices):      # the frame shown at that time
            assert abs(frame[20:100, 20:300].float().mean() - mf.frame_grey(i)) < 1.5


def test_generated_audio_first_and_no_audio(media):
    path = media["audio_first.mp4"]
    with av.open(str(path)) as c:
        assert c.streams[0].type == "audio"
    clip = sample_video(path, num_frames=2)
    assert clip.indices == [0, 25] and clip.frames.shape == (2, 240, 320, 3)
    assert tone_amplitude(load_audio(path).numpy(), 440) == pytest.approx(0.5, abs=0.02)
    path = media["silent_film.mp4"]
    assert probe(path).has_audio is False
    raises_media_error(path, load_audio, match="no audio stream")
    raises_media_error(path, iter_audio, 1.0, match="no audio stream")


def test_late_audio_starts_on_the_media_clock_and_cover_art_is_not_video(media):
    audio = load_audio(media["late_audio.mkv"]).numpy()
    assert len(audio) == 2 * SR
    onset = np.argmax(np.abs(audio) > 0.05)
    assert abs(onset - SR // 2) < 0.005 * SR                # silence until 0.5 s, then the sine
    assert np.abs(audio[: SR // 2 - 200]).max() == 0
    info = probe(media["cover.mp3"])
    assert (info.kind, info.has_video, info.video_codec) == ("audio", False, None)
    assert len(load_audio(media["cover.mp3"])) == pytest.approx(SR, abs=0.01 * SR)
    raises_media_error(media["cover.mp3"], sample_video, num_frames=1, match="no video stream")


def test_generated_images_match_expected_and_transformers(media):
    from transformers.image_utils import load_image as hf_load_image
    for name, (path, expected) in media["images"].items():
        img = load_image(path)
        assert img.dtype == torch.uint8 and img.shape == expected.shape, name
        diff = (img.int() - torch.from_numpy(expected).int()).abs()
        if name.startswith(("flat", "rotated")):          # lossy: flat colours, away from their edges
            edge = np.abs(np.diff(expected.astype(int), axis=0)).sum(axis=(1, 2)) > 0
            near_edge = np.concatenate([edge, [False]]) | np.concatenate([[False], edge])
            assert diff[torch.from_numpy(~near_edge)].max() <= 4, name
        else:
            assert diff.max() == 0, name
        assert torch.equal(img, torch.from_numpy(np.array(hf_load_image(str(path))))), name
        info = probe(path)
        assert info.kind == "image" and (info.height, info.width) in (expected.shape[:2], expected.shape[1::-1])


def test_iter_audio_memory_is_bounded(tmp_path):
    rate, minutes = 8000, 5
    second = np.round(np.sin(2 * np.pi * 440 * np.arange(rate) / rate) * 16000).astype(np.int16).tobytes()
    path = tmp_path / "long.wav"
    path.write_bytes(mf.wav_bytes(second * (60 * minutes), rate=rate))
    tracemalloc.start()
    try:
        n = 0
        for chunk in iter_audio(path, 5.0):
            assert len(chunk) <= 5 * SR
            n += len(chunk)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == 60 * minutes * SR
    assert peak < 2 << 20, peak         # the whole decode would hold 19 MB of float32


# ---- bad input -----------------------------------------------------------------------------------

ALL_READERS = [(probe, (), {}), (load_image, (), {}), (load_audio, (), {}), (iter_audio, (1.0,), {}),
               (video_frame_times, (), {}), (sample_video, (), {"num_frames": 2}),
               (iter_video_frames, (), {"fps": 1.0})]


@pytest.mark.parametrize("fn,args,kw", ALL_READERS, ids=[f[0].__name__ for f in ALL_READERS])
def test_missing_empty_and_non_media_files(tmp_path, fn, args, kw):
    raises_media_error(tmp_path / "nope.mp4", fn, *args, match="not found", **kw)
    raises_media_error(tmp_path, fn, *args, match="not a regular file", **kw)
    (tmp_path / "empty.wav").write_bytes(b"")
    raises_media_error(tmp_path / "empty.wav", fn, *args, match="empty", **kw)
    for ext in (".mp4", ".wav", ".png", ".jpg"):
        fake = tmp_path / f"notes{ext}"
        fake.write_text("these are meeting notes, not media\n" * 20)
        raises_media_error(fake, fn, *args, **kw)


def test_truncated_files(media, tmp_path):
    # mp4 whose index (moov) comes last: cut, the container cannot be opened
    data = media["video.mp4"].read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    for fn, kw in ((probe, {}), (sample_video, {"num_frames": 2}), (load_audio, {})):
        raises_media_error(cut, fn, **kw)
    # Matroska declares its duration: a cut file ends early
    data = media["video.mkv"].read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) * 3 // 4])
    for fn, kw in ((probe, {}), (sample_video, {"num_frames": 2}), (video_frame_times, {})):
        raises_media_error(cut, fn, match="truncated", **kw)
    # audio files whose headers say how long they are
    for name in ("stereo.flac", "stereo.mp3"):
        data = media[name].read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) * 3 // 4])
        raises_media_error(tmp_path / name, load_audio)
    for name in ("rgb.png", "flat.jpg"):
        data = media["images"][name][0].read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) // 2])
        raises_media_error(tmp_path / name, load_image)


def test_empty_audio_unsupported_codec_and_absurd_images(tmp_path):
    empty = tmp_path / "empty_audio.wav"
    empty.write_bytes(mf.wav_bytes(b""))
    raises_media_error(empty, load_audio, match="empty")
    raises_media_error(empty, iter_audio, 1.0, match="empty")
    unknown = tmp_path / "unknown_codec.wav"
    unknown.write_bytes(mf.wav_bytes(np.zeros(SR, np.int16).tobytes(), format_tag=0x1234))
    raises_media_error(unknown, load_audio, match="unsupported audio codec")
    raises_media_error(unknown, probe, match="unsupported audio codec")
    huge = mf.png_header_only(tmp_path / "huge.png", 100_000, 100_000)
    t0 = time.perf_counter()
    raises_media_error(huge, load_image, match="absurd")          # from the header: nothing decoded
    assert time.perf_counter() - t0 < 1.0
    raises_media_error(mf.png_header_only(tmp_path / "big.png", 5000, 4000), load_image,
                       max_pixels=10_000_000, match="over the limit")


def test_bad_arguments(media):
    path = media["video.mp4"]
    raises_media_error(path, sample_video, fps=1, num_frames=3, match="mutually exclusive")
    raises_media_error(path, sample_video, num_frames=51, match="asked for 51 frames")
    assert sample_video(path, fps=30).indices == list(range(50))      # above the video's 25 fps: every frame
    raises_media_error(path, sample_video, num_frames=2, backend="opencv", match="backend")
    raises_media_error(path, sample_video, fps=1, max_bytes=1000, match="max_bytes")
    raises_media_error(path, sample_video, fps=1, max_pixels=1000, match="over the limit")
    raises_media_error(path, load_audio, sample_rate=0, match="sample_rate")
    raises_media_error(path, load_audio, start=2.0, end=1.0, match="empty time window")
    raises_media_error(path, load_audio, start=-1.0, match="start")
    raises_media_error(path, iter_audio, 0.0, match="chunk_seconds")
    err = MediaError(path, "some reason")
    assert str(pickle.loads(pickle.dumps(err))) == str(err)


def test_result_types(media):
    assert isinstance(probe(media["video.mp4"]), MediaInfo)
    clip = sample_video(media["video.mp4"], fps=2)
    assert isinstance(clip, VideoClip) and clip.frames.dtype == torch.uint8 and clip.frames.is_contiguous()
    assert clip.indices == sample_indices(50, 25.0, fps=2) and len(clip.times) == len(clip.indices) == 4
