"""The audio tower against transformers: mel features, encoder + projection, token counts, clip
splitting, streaming, config parsing and bad input.

One tiny random Omni checkpoint (Parakeet d 64, 2 layers, 16 subsampling channels, random
BatchNorm statistics) is written by transformers' `save_pretrained` and loaded through
engine.loader; transformers' feature extractor and `get_audio_features` are the oracle.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from encoders.audio import (AudioConfig, AudioInputError, AudioStream, load_audio_tower, log_mel,
                            num_audio_tokens, slaney_mel_filters)
from engine.config import ConfigError
from engine.loader import LoadError, open_checkpoint
from omni_towers import LLM_HIDDEN, build_audio_checkpoint, feature_extractor, hf_audio_embeddings

SR = 16000
JFK = Path("/work/shared/media/jfk.flac")
if not JFK.exists():
    JFK = Path(__file__).resolve().parents[2] / "shared" / "media" / "jfk.flac"


def synth(seconds: float, seed: int) -> np.ndarray:
    """Two tones with a changing envelope and some noise: a waveform with structure in time."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * SR))
    t = np.arange(n) / SR
    w = 0.4 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1187 * t) * (t % 3 > 1.5)
    w = w * (0.6 + 0.4 * np.sin(2 * np.pi * 1.5 * t)) + 0.05 * rng.standard_normal(n)
    return w.astype(np.float32)


def read_jfk() -> np.ndarray:
    """jfk.flac (44.1 kHz stereo) as float32 16 kHz mono, with PyAV's resampler."""
    av = pytest.importorskip("av")
    if not JFK.exists():
        pytest.skip(f"{JFK} not found")
    out = []
    with av.open(str(JFK)) as f:
        res = av.AudioResampler(format="flt", layout="mono", rate=SR)
        for frame in f.decode(audio=0):
            out += [r.to_ndarray().reshape(-1) for r in res.resample(frame)]
        out += [r.to_ndarray().reshape(-1) for r in res.resample(None)]
    return np.concatenate(out).astype(np.float32)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("omni_audio")
    model = build_audio_checkpoint(path, seed=3)
    return path, model


@pytest.fixture(scope="module")
def tower(ckpt):
    path, _ = ckpt
    raw = json.loads((path / "config.json").read_text())
    return load_audio_tower(raw, open_checkpoint(path), torch.float32, where=str(path))


# ---- front end ----------------------------------------------------------------------------

def test_slaney_filters_equal_librosa():
    librosa = pytest.importorskip("librosa")
    for sr, n_fft, n_mels in ((16000, 512, 128), (16000, 400, 80), (22050, 1024, 64)):
        ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, norm="slaney", htk=False)
        ours = slaney_mel_filters(sr, n_fft, n_mels).numpy()
        assert ours.shape == ref.shape and ours.dtype == np.float32
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-9)
    # and the filters transformers' feature extractor uses
    np.testing.assert_allclose(slaney_mel_filters().numpy(), feature_extractor().mel_filters.numpy(), rtol=0, atol=1e-9)


@pytest.mark.parametrize("source", ["jfk", "synthetic"])
def test_log_mel_equals_transformers(source):
    wave = read_jfk() if source == "jfk" else synth(4.37, seed=1)
    ref = feature_extractor()(wave, sampling_rate=SR, return_tensors="pt")["input_features"][0]
    cfg = AudioConfig()
    ours = log_mel(torch.from_numpy(wave)[None], cfg, slaney_mel_filters())[0]
    assert ours.shape == ref.shape == (1 + len(wave) // 160, 128)
    assert float((ours - ref).abs().max()) <= 1e-4
    assert torch.all(ours[-1] == 0) and ours[:-1].abs().sum(-1).min() > 0     # only the last frame is zeroed


# ---- encoder + projection -----------------------------------------------------------------

@pytest.mark.parametrize("seconds", [2.4, 7.0, 65.0, 62.4])
def test_encode_equals_transformers(ckpt, tower, seconds):
    """2.4 s: 240 valid frames, a multiple of 8, so the last token comes from masked positions.
    65 s: three clips (30, 30, 5 s) encoded as transformers' batch. 62.4 s: the 2.4 s tail clip
    with its extra token, which attends over the whole 30 s padded batch row."""
    _, model = ckpt
    wave = synth(seconds, seed=int(seconds * 10))
    sizes = tower.cfg.clip_sizes(len(wave))
    clips = np.split(wave, np.cumsum(sizes)[:-1])
    ref = hf_audio_embeddings(model, clips)
    got = tower.encode(torch.from_numpy(wave))
    assert got.shape == ref.shape == (num_audio_tokens(len(wave), tower.cfg), LLM_HIDDEN)
    assert float((got - ref).abs().max()) <= 1e-4
    assert float(ref.abs().max()) > 0.5                       # not a comparison of near-zeros


def test_encode_real_speech(ckpt, tower):
    _, model = ckpt
    wave = read_jfk()
    ref = hf_audio_embeddings(model, [wave])
    got = tower.encode(torch.from_numpy(wave))
    assert got.shape == ref.shape
    assert float((got - ref).abs().max()) <= 1e-4


def test_extra_token_sees_the_batch_padding(tower):
    """What the reference does with a short clip's extra token depends on the batch: alone, it
    attends over its own clip only. Valid tokens never depend on padding."""
    clip = torch.from_numpy(synth(2.4, seed=5))
    alone = tower.encode_clips([clip], clip.numel())[0]
    padded = tower.encode_clips([clip], 30 * SR)[0]
    assert alone.shape == padded.shape == (31, LLM_HIDDEN)
    assert float((alone[:-1] - padded[:-1]).abs().max()) <= 1e-5
    assert float((alone[-1] - padded[-1]).abs().max()) > 1e-2


def test_bf16_tower_runs_close_to_fp32(ckpt, tower):
    path, _ = ckpt
    raw = json.loads((path / "config.json").read_text())
    half = load_audio_tower(raw, open_checkpoint(path), torch.bfloat16)
    wave = torch.from_numpy(synth(3.0, seed=9))
    ref, got = tower.encode(wave), half.encode(wave)
    assert got.dtype == torch.bfloat16 and got.shape == ref.shape
    rel = float((got.float() - ref).norm() / ref.norm())
    assert rel < 0.05, rel


# ---- token counts and clips ---------------------------------------------------------------

def test_token_counts_equal_processor_placeholders(tmp_path):
    from omni_builders import build_processor
    from tokenizer_fixture import build_test_tokenizer
    build_test_tokenizer(tmp_path, vocab_size=320)
    proc = build_processor(tmp_path)
    cfg = AudioConfig()
    lengths = [1600, 2000, 38400, 38401, 38559, 38560, 112000, 176000, 479999, 480000]
    clips = [synth(n / SR, seed=n) for n in lengths]
    ids = proc(text=["".join("<so_embedding>" for _ in clips)], audio=clips, sampling_rate=SR)["input_ids"][0]
    so = proc.tokenizer.convert_tokens_to_ids("<so_embedding>")
    runs, run = [], 0
    for i in ids:
        if i == so:
            run += 1
        elif run:
            runs.append(run)
            run = 0
    assert runs == [cfg.num_clip_tokens(n) for n in lengths]
    assert cfg.num_clip_tokens(30 * SR) == 376 and cfg.num_clip_tokens(38400) == 31


def test_clip_splitting():
    cfg = AudioConfig()
    assert cfg.clip_sizes(65 * SR) == [480000, 480000, 80000]
    assert cfg.clip_sizes(60 * SR) == [480000, 480000]
    assert cfg.clip_sizes(30 * SR + 800) == [480000, 1600]       # a tail under 0.1 s is zero-padded
    assert cfg.clip_sizes(100) == [1600]
    assert num_audio_tokens(65 * SR) == 376 * 2 + 63
    assert num_audio_tokens(100) == cfg.num_clip_tokens(1600) == 2      # 11 frames


# ---- streaming ----------------------------------------------------------------------------

def _pieces(wave: torch.Tensor, seed: int):
    """Uneven pieces: empty ones, tiny ones and pieces longer than a 30 s clip."""
    rng = np.random.default_rng(seed)
    pos = 0
    while pos < wave.numel():
        n = int(rng.choice([0, 1, 333, 16000, 123457, 700000]))
        yield wave[pos:pos + n]
        pos += n


@pytest.mark.parametrize("seconds", [65.0, 62.4])
def test_stream_of_30s_clips_equals_encode(tower, seconds):
    wave = torch.from_numpy(synth(seconds, seed=7))
    ref = tower.encode_chunks(wave)
    stream = AudioStream(tower)
    chunks = []
    for piece in _pieces(wave, seed=int(seconds)):
        chunks += stream.push(piece)
        assert stream.buffered_samples < stream.clip_samples
    chunks += stream.flush()
    assert stream.buffered_samples == 0 and stream.flush() == []
    assert [(c.t0, c.t1) for c in chunks] == [(c.t0, c.t1) for c in ref]
    assert chunks[-1].t1 == pytest.approx(seconds)
    got = torch.cat([c.embeddings for c in chunks])
    assert got.shape[0] == num_audio_tokens(wave.numel(), tower.cfg)
    assert float((got - torch.cat([c.embeddings for c in ref])).abs().max()) <= 1e-5


def test_stream_short_clips_encode_each_clip_alone(tower):
    """Low latency: 2 s clips. Each chunk is its own clip, encoded without its neighbours (so it
    differs from the one-shot encode near boundaries), 26 tokens with the masked extra one."""
    wave = torch.from_numpy(synth(7.3, seed=11))
    stream = AudioStream(tower, clip_seconds=2.0)
    chunks = []
    for piece in wave.split(5000):
        chunks += stream.push(piece)
    assert [(c.t0, c.t1) for c in chunks] == [(0.0, 2.0), (2.0, 4.0), (4.0, 6.0)]
    chunks += stream.flush()
    assert (chunks[-1].t0, chunks[-1].t1) == (6.0, pytest.approx(7.3))
    for c in chunks:
        clip = wave[round(c.t0 * SR):round(c.t1 * SR)]
        assert c.embeddings.shape == (tower.cfg.num_clip_tokens(clip.numel()), LLM_HIDDEN)
        assert float((c.embeddings - tower.encode(clip)).abs().max()) <= 1e-5
    assert [c.embeddings.shape[0] for c in chunks[:3]] == [26, 26, 26]
    one_shot = tower.encode(wave)
    assert one_shot.shape[0] != sum(c.embeddings.shape[0] for c in chunks)


def test_stream_memory_is_bounded(tower):
    """Five minutes pushed in 0.37 s pieces: the stream never holds more than one clip."""
    stream = AudioStream(tower)
    piece = torch.from_numpy(synth(0.37, seed=2))
    total, tokens = 0, 0
    for _ in range(int(300 / 0.37)):
        for c in stream.push(piece):
            tokens += c.embeddings.shape[0]
        total += piece.numel()
        assert stream.buffered_samples < stream.clip_samples
        assert stream.buffer_capacity == stream.clip_samples
    tokens += sum(c.embeddings.shape[0] for c in stream.flush())
    assert tokens == num_audio_tokens(total, tower.cfg)


# ---- bad input ----------------------------------------------------------------------------

@pytest.mark.parametrize("wave, words", [
    (torch.zeros(0), "0 samples"),
    (torch.zeros(2, 16000), "1-D"),
    (torch.tensor([0.1, float("nan"), 0.2] * 1000), "NaN"),
    (torch.tensor([0.1, float("inf")] * 1000), "NaN or infinite"),
    (torch.zeros(16000, dtype=torch.int16), "float"),
    ([0.0] * 16000, "tensor"),
])
def test_bad_input_raises_clear_errors(tower, wave, words):
    with pytest.raises(AudioInputError, match=words) as e:
        tower.encode(wave)
    assert isinstance(e.value, ValueError)
    stream = AudioStream(tower)
    if isinstance(wave, torch.Tensor) and wave.dim() == 1 and wave.numel() == 0:
        assert stream.push(wave) == []              # an empty piece of a stream is no error
    else:
        with pytest.raises(AudioInputError, match=words):
            stream.push(wave)


@pytest.mark.parametrize("seconds", [0.05, 31.0, 1e9])
def test_stream_clip_length_is_checked_before_allocating(tower, seconds):
    with pytest.raises(AudioInputError, match="clip_seconds"):
        AudioStream(tower, clip_seconds=seconds)


# ---- config and loading -------------------------------------------------------------------

def _legacy(raw: dict) -> dict:
    """The released checkpoints' spelling: llm_config / sound_config, model_type 'parakeet', and
    no attention_bias / scale_input (both False for Omni)."""
    legacy = {k: v for k, v in raw.items() if k not in ("text_config", "audio_config")}
    legacy["llm_config"] = raw["text_config"]
    sound = {k: v for k, v in raw["audio_config"].items() if k not in ("attention_bias", "scale_input")}
    legacy["sound_config"] = {**sound, "model_type": "parakeet", "sampling_rate": 16000}
    return legacy


def test_config_new_and_legacy_names(ckpt):
    path, _ = ckpt
    raw = json.loads((path / "config.json").read_text())
    cfg = AudioConfig.from_dict(raw)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.head_dim) == (64, 2, 2, 32)
    assert (cfg.subsampling_conv_channels, cfg.projection_hidden_size, cfg.llm_hidden_size) == (16, 96, LLM_HIDDEN)
    assert not cfg.attention_bias and not cfg.scale_input and cfg.convolution_bias
    assert AudioConfig.from_dict(_legacy(raw)) == cfg


def test_legacy_checkpoint_with_featurizer_buffers_loads(ckpt, tower, tmp_path):
    """Released checkpoints carry NeMo featurizer buffers under the encoder prefix; they are skipped."""
    path, _ = ckpt
    raw = json.loads((path / "config.json").read_text())
    tensors = load_file(path / "model.safetensors")
    tensors["sound_encoder.encoder.feature_extractor.featurizer.window"] = torch.hann_window(400)
    tensors["sound_encoder.encoder.feature_extractor.featurizer.fb"] = torch.rand(1, 128, 257)
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    other = load_audio_tower(_legacy(raw), open_checkpoint(tmp_path))
    wave = torch.from_numpy(synth(1.3, seed=4))
    assert torch.equal(other.encode(wave), tower.encode(wave))


def test_missing_or_misshapen_weights_name_the_key(ckpt, tmp_path):
    path, _ = ckpt
    raw = json.loads((path / "config.json").read_text())
    tensors = load_file(path / "model.safetensors")
    key = "sound_encoder.encoder.layers.1.conv.norm.running_var"
    save_file({k: v for k, v in tensors.items() if k != key}, tmp_path / "model.safetensors")
    with pytest.raises(LoadError, match=key):
        load_audio_tower(raw, open_checkpoint(tmp_path))
    bad = dict(raw, audio_config=dict(raw["audio_config"], projection_hidden_size=80))
    with pytest.raises(LoadError, match="sound_projection.linear1.weight"):
        load_audio_tower(bad, open_checkpoint(path))


@pytest.mark.parametrize("field, value, words", [
    ("hidden_act", "relu", "hidden_act"),
    ("conv_kernel_size", 8, "conv_kernel_size"),
    ("subsampling_factor", 6, "subsampling_factor"),
    ("num_mel_bins", 100, "num_mel_bins"),
    ("hidden_size", "wide", "hidden_size"),
    ("num_hidden_layers", 0, "num_hidden_layers"),
    ("projection_hidden_size", None, "projection_hidden_size"),
])
def test_bad_config_fields_are_named(ckpt, field, value, words):
    path, _ = ckpt
    raw = json.loads((path / "config.json").read_text())
    raw["audio_config"][field] = value
    with pytest.raises(ConfigError, match=words):
        AudioConfig.from_dict(raw, source="config.json")


def test_config_without_audio_tower():
    with pytest.raises(ConfigError, match="no `audio_config` or `sound_config`"):
        AudioConfig.from_dict({"text_config": {"hidden_size": 8}})
    with pytest.raises(ConfigError, match="text_config"):
        AudioConfig.from_dict({"audio_config": {"projection_hidden_size": 8}})
