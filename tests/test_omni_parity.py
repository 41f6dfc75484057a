"""The whole Omni model (towers + prompt building + decoder) equals transformers' NemotronH_Omni.

A tiny random `NemotronH_Omni_Reasoning_V3` is written by transformers; we load it with
`OmniModel.load` and run the same inputs through both: the decoder input (ids and embeddings,
after EVS), the last-position logits (fp32, 1e-4) and 8 greedy tokens must match. transformers'
decoder input is captured where its model hands it to the language model, so every step of its
own forward (processor, towers, scatter, EVS pruning) is the reference.
The other way round, the bundled default model (the checkpoint recipes/train writes) loads in
transformers and answers a demo clip as our engine does.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.generate import SamplingParams, Session, generate
from fusion.omni import OmniModel
from fusion.prompt import MediaEmbedding
from omni_builders import build_omni_checkpoint

HEAD = "<|im_start|>user\n"
TAIL = "<|im_end|>\n<|im_start|>assistant\n<think>\n"
STEPS = 8


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("omni")
    hf, proc = build_omni_checkpoint(d)
    return hf, proc, OmniModel.load(d)


def _image(h, w, seed):
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([127 + 120 * np.sin(x / 7 + seed), 255 * y / h, 255 * ((x // 9 + y // 11) % 2)], -1)
    img = img + np.random.default_rng(seed).normal(0, 12, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _video(n, h, w, seed):
    rng = np.random.default_rng(seed)
    frames = np.empty((n, h, w, 3), np.uint8)
    for t in range(n):
        f = np.full((h, w, 3), 40, np.float32) + rng.normal(0, 8, (h, w, 3))
        f[10:30, 5 + 6 * t:25 + 6 * t] = (220, 60, 60)
        frames[t] = np.clip(f, 0, 255)
    frames[3] = frames[2]          # a static pair: EVS should find it
    return frames


def _audio(seconds, seed):
    t = np.arange(int(seconds * 16000)) / 16000
    a = 0.3 * np.sin(2 * np.pi * (220 + 40 * np.sin(t)) * t) + 0.05 * np.random.default_rng(seed).standard_normal(len(t))
    return a.astype(np.float32)


def _hf_decoder_input(hf, proc, text, images=(), video=None, audio=(), rate=0.0):
    """(ids, inputs_embeds) as transformers' forward builds them."""
    from PIL import Image
    kw = {}
    if images:
        kw["images"] = [Image.fromarray(i) for i in images]
    if video is not None:
        kw.update(videos=[video], video_metadata=[{"total_num_frames": len(video), "fps": 30.0, "width": video.shape[2],
                                                   "height": video.shape[1], "duration": len(video) / 30}],
                  do_sample_frames=True, num_frames=7)
    if audio:
        kw["audio"] = list(audio)
    out = proc(text=text, return_tensors="pt", **kw)
    captured = {}
    hook = hf.language_model.register_forward_pre_hook(
        lambda mod, args, kwargs: captured.update(embeds=kwargs["inputs_embeds"]), with_kwargs=True)
    hf.video_pruning_rate = rate
    try:
        with torch.no_grad():
            hf(**out)
    finally:
        hook.remove()
    return out["input_ids"][0].tolist(), captured["embeds"][0]


@torch.no_grad()
def _hf_greedy(hf, embeds):
    """Last logits and STEPS greedy tokens of transformers' language model from `embeds` (no cache)."""
    x, toks, first = embeds[None], [], None
    for _ in range(STEPS):
        logits = hf.language_model(inputs_embeds=x).logits[0, -1]
        first = logits if first is None else first
        toks.append(int(logits.argmax()))
        x = torch.cat([x, hf.get_input_embeddings()(torch.tensor([[toks[-1]]]))], 1)
    return first, toks


def _ours(omni, text, media):
    inp = omni.prepare(text, media)
    embeds = omni.input_embeds(inp)
    s = Session(omni.decoder)
    logits = s.prefill(embeds=embeds)[0]
    toks = list(generate(s, SamplingParams(max_new_tokens=STEPS, temperature=0.0)))
    return inp, embeds, logits, toks


def _check(models, text, media_ours, *, ref_text=None, images=(), video=None, audio=(), rate=0.0, same_ids=True):
    hf, proc, omni = models
    ids, hf_embeds = _hf_decoder_input(hf, proc, ref_text or text, images, video, audio, rate)
    inp, embeds, logits, toks = _ours(omni, text, media_ours)
    if same_ids:
        assert inp.ids == ids
    assert embeds.shape == hf_embeds.shape
    assert (embeds - hf_embeds).abs().max() <= 1e-4
    hf_logits, hf_toks = _hf_greedy(hf, hf_embeds)
    assert (logits - hf_logits).abs().max() <= 1e-4
    assert toks == hf_toks
    return inp


@pytest.mark.parametrize("h,w", [(70, 100), (300, 190)])   # up to min patches / down to max patches
def test_text_and_one_image(models, h, w):
    _, _, omni = models
    img = _image(h, w, seed=h)
    text = HEAD + "<image>\nWhat is this?" + TAIL
    _check(models, text, [omni.embed_image(torch.from_numpy(img))], images=[img])


@pytest.mark.parametrize("rate", [0.0, 0.7])
def test_video_with_and_without_evs(models, rate):
    _, _, omni = models
    frames = _video(16, 72, 120, seed=3)
    idx = [int(i) for i in np.arange(7) * 16 // 7]              # num_frames=7, as the reference samples
    text = HEAD + "<video>\nWhat moves?" + TAIL
    media = omni.embed_video(torch.from_numpy(frames[idx]), idx, 30.0, evs_rate=rate)
    inp = _check(models, text, [media], video=frames, rate=rate, same_ids=rate == 0.0)
    if rate:
        assert media.keep is not None and not media.keep.all() and inp.token_counts()["video"] == int(media.keep.sum())


def test_audio_longer_than_one_clip(models):
    """65 s of audio is cut into 30 s clips, each its own <so_start>..<so_end> run: what the
    reference computes for the same clips given as consecutive audio inputs."""
    _, _, omni = models
    wave = _audio(65.0, seed=4)
    clips = [wave[:480000], wave[480000:960000], wave[960000:]]
    media = omni.embed_audio(torch.from_numpy(wave))
    assert media.num_tokens == omni.audio.num_audio_tokens(len(wave)) and len(media.clip_tokens) == 3
    _check(models, HEAD + "<so_embedding>\nTranscribe." + TAIL, [media],
           ref_text=HEAD + "<so_embedding>" * 3 + "\nTranscribe." + TAIL, audio=clips)


def test_image_video_and_audio_together(models):
    """transformers' forward refuses images and a video in one prompt (both use <image>); the
    reference here is its processor's ids, its towers' outputs placed in prompt order, and its
    language model."""
    hf, proc, omni = models
    from PIL import Image
    img, frames, wave = _image(70, 100, 5), _video(16, 72, 120, 6), _audio(2.4, 7)   # 2.4 s: the extra-token edge
    idx = [int(i) for i in np.arange(7) * 16 // 7]
    text = HEAD + "<image>\n<video>\n<so_embedding>\nDescribe all three." + TAIL
    out = proc(text=text, images=[Image.fromarray(img)], videos=[frames], audio=[wave], return_tensors="pt",
               video_metadata=[{"total_num_frames": 16, "fps": 30.0, "width": 120, "height": 72, "duration": 16 / 30}],
               do_sample_frames=True, num_frames=7)
    ids = out["input_ids"]
    with torch.no_grad():
        e = hf.get_input_embeddings()(ids)[0].clone()
        img_feats = hf.get_image_features(out["pixel_values"], out["image_grid_hw"], return_dict=True).pooler_output
        vid_feats = hf.get_video_features(out["pixel_values_videos"], return_dict=True).pooler_output
        aud = hf.get_audio_features(out["input_features"], out.get("input_features_mask"), return_dict=True).pooler_output
    image_pos = (ids[0] == 18).nonzero().view(-1)
    e[image_pos] = torch.cat([img_feats[0], vid_feats[0]])      # the image comes first in this prompt
    e[ids[0] == 27] = aud
    media = [omni.embed_image(torch.from_numpy(img)), omni.embed_video(torch.from_numpy(frames[idx]), idx, 30.0),
             omni.embed_audio(torch.from_numpy(wave))]
    inp, embeds, logits, toks = _ours(omni, text, media)
    assert inp.ids == ids[0].tolist()
    assert (embeds - e).abs().max() <= 1e-4
    hf_logits, hf_toks = _hf_greedy(hf, e)
    assert (logits - hf_logits).abs().max() <= 1e-4
    assert toks == hf_toks


def test_text_checkpoint_has_no_towers(tmp_path):
    from builders import build_text_checkpoint
    from tokenizer_fixture import build_test_tokenizer
    build_text_checkpoint(tmp_path, "M*E")
    build_test_tokenizer(tmp_path)
    omni = OmniModel.load(tmp_path)
    assert omni.vision is None and omni.audio is None
    with pytest.raises(ValueError, match="no vision tower"):
        omni.embed_image(torch.zeros(32, 32, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="no audio tower"):
        omni.embed_audio(torch.zeros(16000))
    assert isinstance(omni.prepare("hello", []).ids, list)
    assert MediaEmbedding("audio", torch.zeros(3, 4)).num_tokens == 3


def test_the_bundled_model_answers_a_demo_clip_as_transformers_does():
    """The bundled default model (the checkpoint recipes/train writes) loads in transformers'
    NemotronH_Omni_Reasoning_V3 with its processor, every tensor used, and on a demo clip (8 frames,
    its 33 s of audio as two clips) both build the same decoder input and answer the same greedily."""
    import json
    from pathlib import Path

    from hf_oracle import import_torchvision
    import_torchvision()
    from transformers import AutoProcessor, NemotronH_Omni_Reasoning_V3

    from app.evaluate import parse_item, question_prompt
    from encoders.media import load_audio, probe, sample_video

    root = Path(__file__).resolve().parent.parent
    model_dir = root / "assets" / "default-model"
    hf, info = NemotronH_Omni_Reasoning_V3.from_pretrained(model_dir, output_loading_info=True)
    assert not any(info.values()), info
    hf.eval()
    proc = AutoProcessor.from_pretrained(model_dir)
    omni = OmniModel.load(model_dir)

    demo = root / "assets" / "demo"
    item = json.loads((demo / "questions.json").read_text())[0]
    clip = demo / item["video"]
    meta = probe(clip)
    frames = sample_video(clip, num_frames=meta.num_frames).frames.numpy()
    wave = load_audio(clip).numpy()
    assert len(wave) > 480000                                       # more than one 30 s audio clip
    question = question_prompt(parse_item(item, "demo item"))
    out = proc(text=HEAD + "<video>\n" + "<so_embedding>" * 2 + "\n" + question + TAIL, videos=[frames],
               audio=[wave[:480000], wave[480000:]], return_tensors="pt", do_sample_frames=True, num_frames=8,
               video_metadata=[{"total_num_frames": len(frames), "fps": meta.avg_fps, "width": meta.width,
                                "height": meta.height, "duration": meta.duration}])
    captured = {}
    hook = hf.language_model.register_forward_pre_hook(
        lambda mod, args, kwargs: captured.update(embeds=kwargs["inputs_embeds"]), with_kwargs=True)
    try:
        with torch.no_grad():
            hf(**out)
    finally:
        hook.remove()
    idx = [int(i) for i in np.arange(8) * len(frames) // 8]         # num_frames=8, as the reference samples
    media = [omni.embed_video(torch.from_numpy(frames[idx]), idx, meta.avg_fps, evs_rate=0.0),
             omni.embed_audio(torch.from_numpy(wave))]
    inp, embeds, logits, toks = _ours(omni, HEAD + "<video>\n<so_embedding>\n" + question + TAIL, media)
    assert inp.ids == out["input_ids"][0].tolist()
    assert (embeds - captured["embeds"][0]).abs().max() <= 1e-4
    hf_logits, hf_toks = _hf_greedy(hf, captured["embeds"][0])
    assert (logits - hf_logits).abs().max() <= 1e-4
    assert toks == hf_toks
