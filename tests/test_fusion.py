"""Prompt building and the embedding stream (fusion/), against transformers' Omni processor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.tokenizer import Tokenizer
from fusion.prompt import MediaEmbedding, PromptError, build_input, expand_placeholders, video_frame_labels
from fusion.stream import ChunkMerger, EmbeddingChunk, EvsStream, chunk_input
from kernels.evs import evs_retention_mask
from omni_builders import build_processor
from tokenizer_fixture import build_test_tokenizer

IMAGE_ID, AUDIO_ID = 18, 27


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("fusion")
    build_test_tokenizer(d)
    return d


def _image(h, w, seed=0):
    from PIL import Image
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_video_frame_labels_follow_the_reference_rounding():
    # frame 14 at 30 fps reads 0.46 (int(1000/30) = 33 ms a frame), not 0.47
    labels = video_frame_labels([0, 14, 28], 30.0, temporal_patch=2)
    assert labels == ["Frame 1 sampled at 0.00 seconds and frame 2 sampled at 0.46 seconds: ",
                      "Frame 3 sampled at 0.92 seconds: "]
    assert video_frame_labels([0, 1], None, 2) == ["Frame 1 and frame 2: "]


def test_expanded_ids_equal_the_reference_processor(model_dir):
    """Image, video and audio in one prompt: our expansion gives the processor's ids exactly."""
    proc = build_processor(model_dir)
    frames = np.random.default_rng(1).integers(0, 256, (16, 72, 120, 3), dtype=np.uint8)
    meta = {"total_num_frames": 16, "fps": 30.0, "width": 120, "height": 72, "duration": 16 / 30}
    audio = np.random.default_rng(2).standard_normal(37920).astype(np.float32) * 0.1
    text = "<|im_start|>user\n<image>\n<video>\n<so_embedding>\nDescribe.<|im_end|>\n<|im_start|>assistant\n<think>\n"
    out = proc(text=text, images=[_image(70, 100)], videos=[frames], audio=[audio], video_metadata=[meta],
               do_sample_frames=True, num_frames=7, return_tensors="pt")
    gh, gw = out["image_grid_hw"][0].tolist()
    n_img = gh * gw // 4
    tubelets, _, h, w = out["pixel_values_videos"].shape[1:]
    per_tubelet = (h // 16) * (w // 16) // 4
    indices = [int(i) for i in np.arange(7) * 16 // 7]       # the reference's num_frames sampling
    n_audio = int((out["input_ids"][0] == AUDIO_ID).sum())
    D = 8
    media = [MediaEmbedding("image", torch.zeros(n_img, D)),
             MediaEmbedding("video", torch.zeros(tubelets, per_tubelet, D), labels=video_frame_labels(indices, 30.0)),
             MediaEmbedding("audio", torch.zeros(n_audio, D))]
    ours = build_input(Tokenizer.from_dir(model_dir), text, media, image_token_id=IMAGE_ID, audio_token_id=AUDIO_ID)
    assert ours.ids == out["input_ids"][0].tolist()
    counts = ours.token_counts()
    assert counts["image"] == n_img and counts["video"] == tubelets * per_tubelet and counts["audio"] == n_audio


def test_embeddings_land_at_their_placeholders_in_prompt_order(model_dir):
    tok = Tokenizer.from_dir(model_dir)
    D = 4
    img = torch.arange(3 * D, dtype=torch.float32).view(3, D) + 100
    vid = torch.arange(2 * 2 * D, dtype=torch.float32).view(2, 2, D) + 200
    keep = torch.tensor([[True, True], [False, True]])
    aud = torch.arange(2 * D, dtype=torch.float32).view(2, D) + 300
    media = [MediaEmbedding("video", vid, labels=video_frame_labels([0, 1, 2, 3], 2.0), keep=keep),
             MediaEmbedding("image", img), MediaEmbedding("audio", aud)]
    inp = build_input(tok, "a <video> b <image> c <so_embedding> d", media, image_token_id=IMAGE_ID,
                      audio_token_id=AUDIO_ID)
    x = inp.embeds(lambda ids: torch.zeros(1, ids.shape[1], D))
    ids = torch.tensor(inp.ids)
    placed = x[ids == IMAGE_ID]
    expected = torch.cat([vid.reshape(-1, D)[keep.reshape(-1)], img])   # video first: it comes first in the prompt
    assert torch.equal(placed, expected)
    assert torch.equal(x[ids == AUDIO_ID], aud)
    assert int((ids == IMAGE_ID).sum()) == 3 + 3 and x[(ids != IMAGE_ID) & (ids != AUDIO_ID)].abs().sum() == 0
    # EVS drops tokens, never labels or <img></img> pairs
    assert tok.decode(inp.ids).count("<img>") == 3 and "Frame 3 sampled at 1.00 seconds" in tok.decode(inp.ids)


def test_prompt_and_media_must_agree(model_dir):
    tok = Tokenizer.from_dir(model_dir)
    img = MediaEmbedding("image", torch.zeros(2, 4))
    with pytest.raises(PromptError, match="2 media placeholders"):
        expand_placeholders("<image> and <image>", [img])
    with pytest.raises(PromptError, match="placeholder 1 is <so_embedding> but medium 1 is image"):
        expand_placeholders("<so_embedding>", [img])
    with pytest.raises(PromptError, match="needs as many labels"):
        MediaEmbedding("video", torch.zeros(2, 3, 4), labels=["x"])
    with pytest.raises(PromptError, match="unknown media kind"):
        MediaEmbedding("smell", torch.zeros(2, 4))


def test_evs_stream_keeps_the_reference_share_and_the_first_tubelet():
    g = torch.Generator().manual_seed(0)
    video = torch.randn(12, 16, 8, generator=g)
    video[5] = video[4]                              # a static tubelet: nothing of it should survive
    evs = EvsStream(0.75)
    masks = [evs.keep_mask(video[i:i + 3]) for i in range(0, 12, 3)]
    keep = torch.cat(masks)
    assert keep[0].all()                             # the stream's first tubelet stays whole
    assert not keep[5].any()
    assert keep.sum() == 16 + 3 * round(3 * 16 * 0.25)
    # one chunk holding the whole clip keeps what whole-clip EVS keeps
    whole = EvsStream(0.75).keep_mask(video)
    assert whole.sum() == evs_retention_mask(video, 0.75).sum()
    assert torch.equal(EvsStream(0.0).keep_mask(video), torch.ones(12, 16, dtype=torch.bool))
    with pytest.raises(ValueError):
        EvsStream(1.0)


def _chunk(modality, t0, n=2, seq=0):
    return EmbeddingChunk("s", modality, t0, t0 + 1.0, "", torch.zeros(n, 4), seq=seq)


def test_chunk_merger_restores_time_order_video_before_audio():
    m = ChunkMerger(("video", "audio"))
    out = []
    out += m.push(_chunk("audio", 0.0))              # video silent so far: hold
    assert out == []
    out += m.push(_chunk("video", 0.0))
    out += m.push(_chunk("video", 1.0, seq=1))
    out += m.push(_chunk("video", 2.0, seq=2))
    out += m.push(_chunk("audio", 1.0, seq=1))
    out += m.close("audio")
    out += m.flush()
    assert [(c.modality, c.t0) for c in out] == [("video", 0.0), ("audio", 0.0), ("video", 1.0), ("audio", 1.0),
                                                 ("video", 2.0)]


def test_chunk_input_embeds_the_chunk_text(model_dir):
    tok = Tokenizer.from_dir(model_dir)
    table = torch.randn(tok.vocab_size, 4)
    embed = lambda ids: table[ids]
    c = EmbeddingChunk("s", "video", 1.0, 2.0, "Frame 3 sampled at 1.00 seconds: ", torch.ones(3, 4))
    x = chunk_input(c, tok, embed, IMAGE_ID)
    ids = torch.tensor(tok.encode(c.text()))
    assert x.shape == (len(ids), 4) and torch.equal(x[ids == IMAGE_ID], torch.ones(3, 4))
    assert torch.equal(x[ids != IMAGE_ID], table[ids[ids != IMAGE_ID]])
    with pytest.raises(ValueError, match="t0 <= t1"):
        EmbeddingChunk("s", "audio", 2.0, 1.0, "", torch.zeros(1, 4))
