"""The vision tower against transformers: config parsing (new and released names), image and video
pre-processing, ViT + pixel shuffle + mlp1 features, placeholder counts, EVS masks, bad input.

Tiny random Omni checkpoints are written by transformers (tests/omni_builders.py) and loaded by
`load_vision_tower`; the reference is the same transformers model and its processors.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from encoders.vision import (MAX_SIDE, VisionConfig, VisionInputError, image_patch_grid, load_vision_tower,
                             num_image_tokens, pixel_shuffle, preprocess_image, preprocess_video, read_processor_config,
                             tokens_per_tubelet, video_grid)
from engine.config import ConfigError
from engine.loader import LoadError, open_checkpoint
from kernels.evs import evs_num_kept, evs_retention_mask
from omni_builders import CLIP_MEAN, CLIP_STD, build_omni_checkpoint, build_processor

MEDIA = "/work/shared/media"
TOL = 1e-4
IMAGE_TOKEN_ID = 18


# ---- fixtures ------------------------------------------------------------------------------

def _load(path, processor=None):
    raw = json.loads((path / "config.json").read_text())
    pc = processor.image_processor.to_dict() if processor is not None else None
    pc = {"image_processor": pc, "video_processor": processor.video_processor.to_dict()} if pc else \
        read_processor_config(path)
    return load_vision_tower(raw, open_checkpoint(path), torch.float32, processor_config=pc, where=str(path))


@pytest.fixture(scope="module")
def omni(tmp_path_factory):
    """(transformers model, its processor, checkpoint dir, our tower); tiny processor budgets
    (16..64 patches an image, 32 a video frame)."""
    path = tmp_path_factory.mktemp("omni")
    model, processor = build_omni_checkpoint(path, pattern="M*", seed=3)
    return model, processor, path, _load(path)


@pytest.fixture(scope="module")
def omni_mtp(tmp_path_factory):
    """An MTP checkpoint: its vision features pass a final LayerNorm."""
    path = tmp_path_factory.mktemp("omni_mtp")
    model, processor = build_omni_checkpoint(path, pattern="*", seed=5, num_nextn_predict_layers=1)
    with torch.no_grad():   # a non-trivial LayerNorm, so the test sees whether it is applied
        model.vision_final_layernorm.weight.normal_(1.0, 0.3)
        model.vision_final_layernorm.bias.normal_(0.0, 0.3)
    model.save_pretrained(path)
    return model, processor, path, _load(path)


def synthetic_image(h, w, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([255 * x / max(w - 1, 1), 255 * y / max(h - 1, 1), 128 + 100 * np.sin(x / 7 + y / 5)], -1)
    return np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)


def synthetic_video(n, h, w, seed=0):
    """A square moving across a ramp, with noise; frames 4, 5 repeat frames 2, 3 (a static tubelet for EVS)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = np.empty((n, h, w, 3), np.float32)
    for t in range(n):
        frames[t] = np.stack([60 + 40 * np.sin((x + 4 * t) / 9), 255 * y / (h - 1), np.full_like(x, 20 + 9 * t)], -1)
        x0 = (7 * t) % max(w - 24, 1)
        frames[t, 8:32, x0:x0 + 24] = (250, 240, 20)
    frames = np.clip(frames + rng.normal(0, 8, frames.shape), 0, 255).astype(np.uint8)
    if n >= 6:
        frames[4:6] = frames[2:4]
    return frames


def real_image(name):
    return np.array(Image.open(f"{MEDIA}/{name}").convert("RGB"))


def placeholder_count(processor, **media):
    text = "<image>" if "images" in media else "<video>"
    out = processor(text=[text], return_tensors="pt", **media)
    return int((out["input_ids"] == IMAGE_TOKEN_ID).sum())


# ---- config --------------------------------------------------------------------------------

def test_config_of_a_saved_checkpoint(omni):
    model, processor, path, tower = omni
    cfg, hf = tower.cfg, model.config
    v = hf.vision_config
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.mlp_hidden) == (
        v.hidden_size, v.num_hidden_layers, v.num_attention_heads, int(v.hidden_size * v.mlp_ratio))
    assert (cfg.num_cls_tokens, cfg.num_registers, cfg.pos_grid) == (
        v.num_cls_tokens, v.num_registers, v.max_img_size // v.patch_size)
    assert (cfg.temporal_patch_size, cfg.projector_hidden_size, cfg.llm_hidden_size, cfg.final_layernorm) == (
        2, hf.projector_hidden_size, hf.text_config.hidden_size, False)
    ip, vp = processor.image_processor, processor.video_processor
    assert (cfg.min_num_patches, cfg.max_num_patches, cfg.max_model_len) == (
        ip.min_num_patches, ip.max_num_patches, ip.max_model_len)
    assert (cfg.video_target_num_patches, cfg.video_maintain_aspect_ratio) == (vp.video_target_num_patches, True)
    # the processor files save_pretrained wrote give the same config as the live processor
    raw = json.loads((path / "config.json").read_text())
    assert VisionConfig.from_dict(raw, read_processor_config(path), source="checkpoint") == cfg


RELEASED_STYLE = {   # the shape of the released Omni config.json (legacy names, remote RADIO config)
    "architectures": ["NemotronH_Nano_Omni_Reasoning_V3"],
    "llm_config": {"hidden_size": 2688, "num_nextn_predict_layers": 0},
    "vit_hidden_size": 1280, "projector_hidden_size": 20480, "downsample_ratio": 0.5, "ps_version": "v2",
    "patch_size": 16, "force_image_size": 512, "norm_mean": CLIP_MEAN, "norm_std": CLIP_STD,
    "video_temporal_patch_size": 2, "img_context_token_id": 18,
    "vision_config": {
        "args": {"model": "vit_huge_patch16_224", "cpe_max_size": 2048, "register_multiple": 10,
                 "cls_token_per_teacher": True, "min_num_patches": 1024, "max_num_patches": 13312,
                 "teachers": [{"name": "clip"}, {"name": "siglip"}, {"name": "dino_v2"}, {"name": "sam"},
                              {"name": "clip", "use_summary": False}]},
        "patch_size": 16, "max_resolution": 2048, "preferred_resolution": [768, 768],
        "video_temporal_patch_size": 2, "separate_video_embedder": True,
        "video_target_num_patches": 1024, "video_maintain_aspect_ratio": True},
}


def test_config_released_names_equal_new_names():
    from transformers import NemotronH_Omni_Reasoning_V3_Config
    legacy = VisionConfig.from_dict(RELEASED_STYLE, source="released")
    assert (legacy.hidden_size, legacy.num_layers, legacy.num_heads, legacy.mlp_hidden) == (1280, 32, 16, 5120)
    assert (legacy.num_cls_tokens, legacy.num_registers, legacy.pos_grid) == (4, 6, 128)
    assert (legacy.min_num_patches, legacy.max_num_patches, legacy.video_target_num_patches) == (1024, 13312, 1024)
    assert (legacy.projector_hidden_size, legacy.llm_hidden_size, legacy.temporal_patch_size) == (20480, 2688, 2)
    # the same model written by transformers' save_pretrained (new names; processor settings in
    # processor_config.json) parses to the same config
    new = NemotronH_Omni_Reasoning_V3_Config(
        text_config=dict(hidden_size=2688),
        vision_config=dict(num_cls_tokens=4, num_registers=6, video_temporal_patch_size=2),
        projector_hidden_size=20480, vision_hidden_size=1280, video_temporal_patch_size=2, audio_config=None,
    ).to_dict()
    processor = {"image_processor": {"min_num_patches": 1024, "max_num_patches": 13312, "patch_size": 16,
                                     "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD)},
                 "video_processor": {"video_target_num_patches": 1024, "norm_mean": list(CLIP_MEAN),
                                     "norm_std": list(CLIP_STD), "temporal_patch_size": 2}}
    assert VisionConfig.from_dict(new, processor, source="released") == legacy


def _mutated(change):
    raw = json.loads(json.dumps(RELEASED_STYLE))
    change(raw)
    return raw


@pytest.mark.parametrize("change, field", [
    (lambda r: r.pop("vision_config"), "vision_config"),
    (lambda r: r.pop("llm_config"), "text_config"),
    (lambda r: r["vision_config"]["args"].update(model="vit_giant_patch99"), "args.model"),
    (lambda r: r.update(downsample_ratio=0.3), "downsample_ratio"),
    (lambda r: r.update(video_temporal_patch_size=4), "video_temporal_patch_size"),
    (lambda r: r.update(vit_hidden_size=1024), "vit_hidden_size"),
    (lambda r: r.update(ps_version="v1"), "ps_version"),
    (lambda r: r.update(norm_std=[0.2, 0.2]), "image_std"),
    (lambda r: r["vision_config"].update(hidden_size=1281), "hidden_size"),
    (lambda r: r["vision_config"].update(hidden_act="silu"), "hidden_act"),
    (lambda r: r["vision_config"].update(separate_video_embedder=False), "separate_video_embedder"),
    (lambda r: r["vision_config"]["args"].update(min_num_patches="many"), "min_num_patches"),
])
def test_config_errors_name_the_field(change, field):
    with pytest.raises(ConfigError, match=field) as e:
        VisionConfig.from_dict(_mutated(change), source="cfg.json")
    assert isinstance(e.value, ValueError) and "cfg.json" in str(e.value)
    with pytest.raises(ConfigError, match="image_processor.patch_size"):
        VisionConfig.from_dict(RELEASED_STYLE, {"image_processor": {"patch_size": 14}})


# ---- pre-processing ------------------------------------------------------------------------

IMAGES = {   # name -> uint8 [H, W, 3]; the tiny processor takes 16..64 patches an image
    "astronaut": lambda: real_image("astronaut.png"),      # 512x512: down to the 64-patch cap
    "chelsea": lambda: real_image("chelsea.png"),          # 451x300
    "rocket": lambda: real_image("rocket.jpg"),            # 427x640 portrait
    "small": lambda: synthetic_image(20, 30, 1),           # 2x2 patches: up to the 16-patch floor
    "exact": lambda: synthetic_image(64, 96, 2),           # 4x6 grid already: no resize
    "odd_rounding": lambda: synthetic_image(80, 48, 3),    # 80 px -> round(5.5) = 6 rows
}


@pytest.mark.parametrize("name", list(IMAGES))
def test_image_pixels_grid_and_tokens_equal_reference(omni, name):
    _, processor, _, tower = omni
    image = IMAGES[name]()
    ref = processor.image_processor(images=[Image.fromarray(image)], return_tensors="pt")
    patches, grid = preprocess_image(torch.from_numpy(image), tower.cfg)
    assert list(grid) == ref["image_grid_hw"][0].tolist()
    assert torch.equal(patches, ref["pixel_values"])
    assert num_image_tokens(*image.shape[:2], tower.cfg) == placeholder_count(
        processor, images=[Image.fromarray(image)]) == grid[0] * grid[1] // 4
    n = grid[0] * grid[1]
    if name == "astronaut":
        assert n == 64                     # scaled down to max_num_patches
    if name == "small":
        assert n == 16                     # scaled up to min_num_patches
    if name == "odd_rounding":
        assert grid == (6, 4)


@pytest.mark.parametrize("name", ["astronaut", "rocket", "small", "odd_rounding"])
def test_image_features_equal_reference(omni, name):
    model, processor, _, tower = omni
    image = IMAGES[name]()
    ref = processor.image_processor(images=[Image.fromarray(image)], return_tensors="pt")
    with torch.no_grad():
        out = model.get_image_features(ref["pixel_values"], ref["image_grid_hw"])
        vit_ref = model.vision_model(ref["pixel_values"], image_grid_hw=ref["image_grid_hw"]).features
    grid = tuple(ref["image_grid_hw"][0].tolist())
    vit = tower.vit(ref["pixel_values"][None], grid)[0]
    assert (vit - vit_ref).abs().max() < TOL
    ours = tower.encode_image(torch.from_numpy(image))
    assert ours.shape == out.pooler_output[0].shape == (grid[0] * grid[1] // 4, model.config.text_config.hidden_size)
    assert (ours - out.pooler_output[0]).abs().max() < TOL


def test_images_packed_in_one_reference_call(omni):
    """The reference packs several images into one sequence with per-image attention; each
    image encoded alone gives the same features."""
    model, processor, _, tower = omni
    images = [real_image("chelsea.png"), synthetic_image(40, 50, 4), real_image("rocket.jpg")]
    ref = processor.image_processor(images=[Image.fromarray(i) for i in images], return_tensors="pt")
    with torch.no_grad():
        pooled = model.get_image_features(ref["pixel_values"], ref["image_grid_hw"]).pooler_output
    for image, want in zip(images, pooled):
        assert (tower.encode_image(torch.from_numpy(image)) - want).abs().max() < TOL


def test_release_sized_budgets(omni):
    """The released processor budgets (1024..13312 patches, 1024 a video frame): the 16x16 learned
    position grid is resized up to grids far beyond it."""
    model, _, path, _ = omni
    processor = build_processor(path, min_num_patches=1024, max_num_patches=13312, video_target_num_patches=1024)
    tower = _load(path, processor)
    image = real_image("chelsea.png")
    ref = processor.image_processor(images=[Image.fromarray(image)], return_tensors="pt")
    patches, grid = preprocess_image(torch.from_numpy(image), tower.cfg)
    assert grid == (26, 40) and torch.equal(patches, ref["pixel_values"])
    with torch.no_grad():
        want = model.get_image_features(ref["pixel_values"], ref["image_grid_hw"]).pooler_output[0]
    assert (tower.encode_image(torch.from_numpy(image)) - want).abs().max() < TOL
    assert num_image_tokens(300, 451, tower.cfg) == placeholder_count(processor, images=[Image.fromarray(image)]) == 260
    frames = synthetic_video(3, 90, 160, 7)
    ref = processor.video_processor(videos=[frames], do_sample_frames=False, return_tensors="pt")
    assert torch.equal(preprocess_video(torch.from_numpy(frames), tower.cfg), ref["pixel_values_videos"][0])
    assert video_grid(90, 160, tower.cfg) == (24, 42) and tokens_per_tubelet(90, 160, tower.cfg) == 252


@pytest.mark.parametrize("rows, cols", [(8, 8), (16, 16), (3, 5), (5, 3), (26, 40), (2, 64), (64, 2), (1, 1)])
def test_position_embedding_equals_reference(omni, rows, cols):
    model, _, _, tower = omni
    ours = tower.vit.patch_generator.position_embedding(rows, cols)
    with torch.no_grad():
        want = model.vision_model.embeddings._interpolate_position_embedding((rows, cols), torch.float32)[0]
    assert ours.shape == want.shape and (ours - want).abs().max() < 1e-5


def test_pixel_shuffle_channel_order(omni):
    model = omni[0]
    x = torch.randn(2, 4, 6, 5)
    y = pixel_shuffle(x, 2)
    assert y.shape == (2, 2, 3, 20)
    for i in range(2):
        for j in range(3):
            want = torch.cat([x[:, 2 * i, 2 * j], x[:, 2 * i, 2 * j + 1], x[:, 2 * i + 1, 2 * j],
                              x[:, 2 * i + 1, 2 * j + 1]], -1)
            assert torch.equal(y[:, i, j], want)
    assert torch.equal(y, model.pixel_shuffle(x, 0.5))


@pytest.mark.parametrize("h, w", [(72, 120), (120, 72), (100, 100), (37, 301), (1080, 1920), (1, 1)])
@pytest.mark.parametrize("target, keep_aspect", [(32, True), (1024, True), (256, False), (30, True)])
def test_video_grid_equals_reference(h, w, target, keep_aspect):
    from transformers import NemotronH_Omni_Reasoning_V3VideoProcessor
    vp = NemotronH_Omni_Reasoning_V3VideoProcessor(norm_mean=CLIP_MEAN, norm_std=CLIP_STD,
                                                   video_target_num_patches=target,
                                                   video_maintain_aspect_ratio=keep_aspect)
    cfg = VisionConfig(video_target_num_patches=target, video_maintain_aspect_ratio=keep_aspect, llm_hidden_size=8)
    pw, ph = vp._compute_target_patches(h, w)
    assert video_grid(h, w, cfg) == (ph, pw)


# ---- video ---------------------------------------------------------------------------------

def test_video_pixels_features_and_tokens_equal_reference(omni):
    model, processor, _, tower = omni
    frames = synthetic_video(7, 72, 120, 1)                        # odd: the last frame is repeated
    ref = processor.video_processor(videos=[frames], do_sample_frames=False, return_tensors="pt")
    pixels = preprocess_video(torch.from_numpy(frames), tower.cfg)
    assert pixels.shape == (4, 6, 64, 128)
    assert torch.equal(pixels, ref["pixel_values_videos"][0])
    assert torch.equal(pixels[3, :3], pixels[3, 3:])               # odd last frame, repeated
    with torch.no_grad():
        want = model.get_video_features(ref["pixel_values_videos"]).pooler_output[0]
    per = tokens_per_tubelet(72, 120, tower.cfg)
    ours = tower.encode_video(torch.from_numpy(frames))
    assert ours.shape == (4, per, model.config.text_config.hidden_size)
    assert (ours.reshape(-1, ours.shape[-1]) - want).abs().max() < TOL
    # one tubelet per ViT batch gives the same features
    assert (tower.encode_video(torch.from_numpy(frames), batch_tokens=1) - ours).abs().max() < 1e-5
    meta = dict(total_num_frames=7, fps=30.0, width=120, height=72, duration=7 / 30)
    assert placeholder_count(processor, videos=[frames], video_metadata=[meta], do_sample_frames=False) == 4 * per


def test_video_resized_a_few_frames_at_a_time(omni, monkeypatch):
    """Large source frames are converted to float and resized in small groups: same pixels."""
    from encoders import vision
    _, processor, _, tower = omni
    frames = synthetic_video(5, 90, 160, 4)
    ref = processor.video_processor(videos=[frames], do_sample_frames=False, return_tensors="pt")
    monkeypatch.setattr(vision, "RESIZE_PIXELS", 2 * 90 * 160)
    frames.setflags(write=False)                                   # read-only arrays are taken as they are
    assert torch.equal(preprocess_video(frames, tower.cfg), ref["pixel_values_videos"][0])


@pytest.mark.parametrize("rate", [0.7, 0.5])
def test_evs_masks_on_projected_video_equal_reference(omni, rate):
    from transformers.models.nemotron_h_omni.modeling_nemotron_h_omni import compute_retention_mask
    model, processor, _, tower = omni
    frames = synthetic_video(16, 72, 120, 2)
    ref = processor.video_processor(videos=[frames], do_sample_frames=False, return_tensors="pt")
    with torch.no_grad():
        want_embeds = model.get_video_features(ref["pixel_values_videos"]).pooler_output[0]
    ours = tower.encode_video(torch.from_numpy(frames), batch_tokens=40)
    want = compute_retention_mask(want_embeds, ours.shape[0], rate)
    mask = evs_retention_mask(ours, rate)
    assert torch.equal(mask.reshape(-1), want)
    assert mask[0].all() and int(mask.sum()) == evs_num_kept(*ours.shape[:2], rate)
    assert not mask[2].any()                                        # the tubelet of repeated frames adds nothing


def test_mtp_checkpoint_final_layernorm(omni_mtp):
    model, processor, _, tower = omni_mtp
    assert tower.cfg.final_layernorm and hasattr(tower, "vision_projector")
    image = real_image("rocket.jpg")
    ref = processor.image_processor(images=[Image.fromarray(image)], return_tensors="pt")
    frames = synthetic_video(5, 72, 120, 3)
    vref = processor.video_processor(videos=[frames], do_sample_frames=False, return_tensors="pt")
    with torch.no_grad():
        want = model.get_image_features(ref["pixel_values"], ref["image_grid_hw"]).pooler_output[0]
        vwant = model.get_video_features(vref["pixel_values_videos"]).pooler_output[0]
    assert (tower.encode_image(torch.from_numpy(image)) - want).abs().max() < TOL
    ours = tower.encode_video(torch.from_numpy(frames))
    assert (ours.reshape(-1, ours.shape[-1]) - vwant).abs().max() < TOL


def test_bf16_tower_tracks_fp32(omni):
    _, _, path, tower = omni
    raw = json.loads((path / "config.json").read_text())
    bf16 = load_vision_tower(raw, open_checkpoint(path), torch.bfloat16, processor_config=read_processor_config(path))
    image = torch.from_numpy(real_image("chelsea.png"))
    a, b = tower.encode_image(image), bf16.encode_image(image)
    assert b.dtype == torch.bfloat16
    assert (a - b.float()).norm() / a.norm() < 0.05


# ---- bad input and bad checkpoints ------------------------------------------------------------

@pytest.mark.parametrize("image, words", [
    (torch.zeros(0, 10, 3, dtype=torch.uint8), "empty"),
    (torch.zeros(10, 10, 3), "uint8"),
    (torch.zeros(10, 10, dtype=torch.uint8), "shape"),
    (torch.zeros(10, 10, 4, dtype=torch.uint8), "shape"),
    ([[0, 0, 0]], "tensor"),
    (torch.zeros(1, 1, 3, dtype=torch.uint8).expand(100_000, 100_000, 3), "beyond"),   # never allocated
    (torch.zeros(1, 1, 3, dtype=torch.uint8).expand(16, MAX_SIDE, 3), "elongated"),
])
def test_bad_images_raise_value_errors(omni, image, words):
    tower = omni[3]
    with pytest.raises(VisionInputError, match=words) as e:
        tower.encode_image(image)
    assert isinstance(e.value, ValueError) and "image" in str(e.value)


@pytest.mark.parametrize("frames, words", [
    (torch.zeros(0, 8, 8, 3, dtype=torch.uint8), "empty"),
    (np.zeros((2, 8, 8, 3), np.float32), "uint8"),
    (torch.zeros(8, 8, 3, dtype=torch.uint8), "shape"),
    (torch.zeros(1, 1, 1, 3, dtype=torch.uint8).expand(1_000_000, 64, 64, 3), "tokens"),         # never allocated
    (torch.zeros(1, 1, 1, 3, dtype=torch.uint8).expand(2, 50_000, 50_000, 3), "beyond"),
])
def test_bad_videos_raise_value_errors(omni, frames, words):
    tower = omni[3]
    with pytest.raises(VisionInputError, match=words) as e:
        tower.encode_video(frames)
    assert isinstance(e.value, ValueError) and "video" in str(e.value)
    with pytest.raises(VisionInputError):
        image_patch_grid(0, 10, tower.cfg)


def test_checkpoint_problems_raise_load_errors(omni, tmp_path):
    _, _, path, _ = omni
    raw = json.loads((path / "config.json").read_text())
    tensors = open_checkpoint(path)
    missing = {k: f for k, f in tensors.items() if k != "mlp1.1.weight"}
    with pytest.raises(LoadError, match="missing tensor 'mlp1.1.weight'"):
        load_vision_tower(raw, missing)
    wrong = json.loads(json.dumps(raw))
    wrong["projector_hidden_size"] = 96
    with pytest.raises(LoadError, match="mlp1.1.weight"):
        load_vision_tower(wrong, tensors)
    # the released checkpoint has no layer scales; one that is not 1 cannot be ignored
    state = load_file(path / "model.safetensors")
    assert any(".layer_scale" in k for k in state)
    key = next(k for k in state if k.endswith("layer_scale2.lambda1"))
    state[key] = state[key] * 1.5
    (tmp_path / "bad").mkdir()
    save_file(state, tmp_path / "bad" / "model.safetensors")
    with pytest.raises(LoadError, match="layer_scale2"):
        load_vision_tower(raw, open_checkpoint(tmp_path / "bad"))
    # without layer scales (as released) the tower loads and needs nothing else
    kept = {k: v for k, v in load_file(path / "model.safetensors").items() if ".layer_scale" not in k}
    (tmp_path / "released").mkdir()
    save_file(kept, tmp_path / "released" / "model.safetensors")
    tower = load_vision_tower(raw, open_checkpoint(tmp_path / "released"),
                              processor_config=read_processor_config(path))
    assert math.isfinite(float(tower.encode_image(torch.from_numpy(synthetic_image(30, 40))).abs().sum()))
