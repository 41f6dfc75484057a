"""The vision tower of Nemotron Omni: C-RADIO ViT, pixel shuffle and the `mlp1` projector, for
images and video, with the pre-processing that decides which pixels the ViT sees.

    image uint8 [H, W, 3] -> resize to an even patch grid (dynamic resolution) -> normalize
        -> 16x16 patches -> ViT -> (final LayerNorm) -> pixel_shuffle -> mlp1 -> [tokens, llm_hidden]
    video uint8 [T, H, W, 3] -> every frame resized to one tile -> normalize -> frame pairs
        stacked as 6-channel tubelets -> the ViT's `video_embedder` -> ... -> [tubelets, tokens, llm_hidden]

Read top to bottom: the config, pre-processing (grids, resize, patches), the ViT, the tower.
Module names equal the released checkpoint names (`vision_model.radio_model.model.blocks.3.attn.qkv
.weight` is `tower.vision_model.radio_model.model.blocks[3].attn.qkv.weight`, `mlp1.1.weight` is
`tower.mlp1[1].weight`), so `load_vision_tower` goes through engine.loader.load_weights with only
a short list of tensors to ignore. Numerics follow transformers' `radio` model and the
`nemotron_h_omni` image / video processors (spec nemotron-omni.md sections 2, 3, 5).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.config import ConfigError
from engine.loader import LoadError, checkpoint_dtype, load_weights, open_checkpoint
from engine.model import RMSNorm

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Media larger than this is refused before anything is allocated for it (a 32768-pixel side is
# already far beyond the largest grid the model uses: it is resized down to <= max_num_patches).
MAX_SIDE = 32768
MAX_PIXELS = 1 << 27
MAX_VIDEO_TOKENS = 1 << 20          # one video's projected tokens: a 1M-token context at most
DEFAULT_BATCH_TOKENS = 8192         # ViT sequence tokens per video batch: memory stays flat
RESIZE_PIXELS = 1 << 25             # source pixels a video resize converts to float at once

# timm ViT names in released (legacy) RADIO configs -> (width, depth, heads, mlp hidden).
_VIT_DIMS = {
    "vit_small_patch16_224": (384, 12, 6, 1536),
    "vit_base_patch16_224": (768, 12, 12, 3072),
    "vit_large_patch16_224": (1024, 24, 16, 4096),
    "vit_huge_patch16_224": (1280, 32, 16, 5120),
}


class VisionInputError(ValueError):
    """An image or video the tower cannot take: says which input and why."""


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VisionConfig:
    # ViT
    hidden_size: int = 1280
    num_layers: int = 32
    num_heads: int = 16
    mlp_hidden: int = 5120
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    patch_size: int = 16
    pos_grid: int = 128                 # learned position grid side: cpe_max_size / patch_size
    num_cls_tokens: int = 4
    num_registers: int = 6
    temporal_patch_size: int = 2        # frames per tubelet; 1: video frames go through `embedder`
    # projector
    downsample_ratio: float = 0.5
    projector_hidden_size: int = 20480
    llm_hidden_size: int = 2688
    projector_eps: float = 1e-5
    final_layernorm: bool = False       # MTP checkpoints: LayerNorm on the ViT features
    # image processor
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    min_num_patches: int = 1024
    max_num_patches: int = 13312        # 0: no cap
    max_model_len: int = 16384
    # video processor
    video_mean: tuple[float, float, float] = CLIP_MEAN
    video_std: tuple[float, float, float] = CLIP_STD
    video_target_num_patches: int = 1024
    video_maintain_aspect_ratio: bool = True
    source: str = field(default="<dict>", compare=False)

    @property
    def merge(self) -> int:
        """Side of the patch block pixel shuffle folds into one token (2 for ratio 0.5)."""
        return round(1 / self.downsample_ratio)

    @property
    def num_prefix_tokens(self) -> int:
        return self.num_cls_tokens + self.num_registers

    @property
    def patch_dim(self) -> int:
        return 3 * self.patch_size ** 2

    @classmethod
    def from_dict(cls, raw: dict, processor: dict | None = None, source: str = "<dict>") -> "VisionConfig":
        """The vision fields of an Omni / VL config.json (`save_pretrained` or released names),
        with the image / video processor settings of `processor` (a processor_config.json:
        {"image_processor": {...}, "video_processor": {...}}) taking precedence."""
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: config is not a JSON object")
        v = raw.get("vision_config")
        if not isinstance(v, dict):
            raise ConfigError(f"{source}: no `vision_config` section; not an Omni / VL checkpoint config")
        args = v.get("args") if isinstance(v.get("args"), dict) else {}          # released RADIO configs
        text = next((raw[k] for k in ("text_config", "llm_config") if isinstance(raw.get(k), dict)), None)
        if text is None:
            raise ConfigError(f"{source}: no `text_config` (or `llm_config`) section: the projector needs "
                              "the language model's hidden_size")
        processor = processor or {}
        image_p = processor.get("image_processor", processor)
        video_p = processor.get("video_processor", processor)
        image_p = image_p if isinstance(image_p, dict) else {}
        video_p = video_p if isinstance(video_p, dict) else {}
        sections = {"": raw, "vision_config.": v, "vision_config.args.": args, "text_config.": text,
                    "image_processor.": image_p, "video_processor.": video_p}

        def get(names, default=None, kind=None):
            """The first present value of `names` ("section.field" or "field" at the top level)."""
            for name in names:
                section, _, key = name.rpartition(".")
                d = sections[section + "." if section else ""]
                if d.get(key) is not None:
                    return _typed(d[key], kind, f"{source}: `{name}`")
            return default

        model = get(["vision_config.args.model", "vision_config.model_name"])
        if model is not None and model not in _VIT_DIMS and get(["vision_config.hidden_size"]) is None:
            raise ConfigError(f"{source}: `vision_config.args.model` = {model!r}: unknown ViT "
                              f"(known: {', '.join(_VIT_DIMS)})")
        width, depth, heads, mlp = _VIT_DIMS.get(model, (1280, 32, 16, None))
        width = get(["vision_config.hidden_size"], width, int)
        mlp_ratio = get(["vision_config.mlp_ratio"], None if mlp else 4.0, float)
        mlp = get(["vision_config.intermediate_size"], int(width * mlp_ratio) if mlp_ratio else mlp, int)
        patch = get(["vision_config.patch_size", "patch_size"], 16, int)

        num_cls = get(["vision_config.num_cls_tokens"], None, int)
        num_reg = get(["vision_config.num_registers", "vision_config.args.cpe_num_registers"], None, int)
        if num_cls is None:       # released RADIO: one CLS token per distinct teacher, registers pad to a multiple
            teachers = args.get("teachers") or []
            per_teacher = args.get("cls_token_per_teacher", True)
            num_cls = len({t.get("name") for t in teachers if isinstance(t, dict)}) if (per_teacher and teachers) else 1
        if num_reg is None:
            multiple = get(["vision_config.args.register_multiple"], 0, int)
            num_reg = multiple - num_cls % multiple if multiple else 0

        t_vision = get(["vision_config.video_temporal_patch_size"], None, int)
        t_top = get(["video_temporal_patch_size"], None, int)
        if t_vision is not None and t_top is not None and t_vision != t_top:
            raise ConfigError(f"{source}: `vision_config.video_temporal_patch_size` = {t_vision} and "
                              f"`video_temporal_patch_size` = {t_top} must be equal")
        temporal = t_vision or t_top or 1
        if temporal > 1 and v.get("separate_video_embedder") is False:
            raise ConfigError(f"{source}: `vision_config.separate_video_embedder` = false (one embedder shared by "
                              "images and tubelets) is not supported")

        target = get(["video_processor.video_target_num_patches", "vision_config.video_target_num_patches",
                      "video_target_num_patches"], None, int)
        if target is None and get(["vision_config.video_target_img_size"], None, int):
            target = math.ceil(get(["vision_config.video_target_img_size"], None, int) / patch) ** 2
        mean = get(["norm_mean", "vision_config.norm_mean"], CLIP_MEAN)
        std = get(["norm_std", "vision_config.norm_std"], CLIP_STD)

        cfg = cls(
            hidden_size=width,
            num_layers=get(["vision_config.num_hidden_layers"], depth, int),
            num_heads=get(["vision_config.num_attention_heads"], heads, int),
            mlp_hidden=mlp,
            layer_norm_eps=get(["vision_config.layer_norm_eps", "vision_config.args.layer_norm_eps"], 1e-6, float),
            qkv_bias=get(["vision_config.qkv_bias", "vision_config.args.qkv_bias"], True, bool),
            patch_size=patch,
            pos_grid=get(["vision_config.max_img_size", "vision_config.args.cpe_max_size",
                          "vision_config.max_resolution"], 2048, int) // patch,
            num_cls_tokens=num_cls,
            num_registers=num_reg,
            temporal_patch_size=temporal,
            downsample_ratio=get(["downsample_ratio"], 0.5, float),
            projector_hidden_size=get(["projector_hidden_size"], 4096, int),
            llm_hidden_size=get(["text_config.hidden_size"], None, int) or 0,
            final_layernorm=get(["text_config.num_nextn_predict_layers"], 0, int) > 0,
            image_mean=_triple(get(["image_processor.image_mean", "image_processor.norm_mean"], mean),
                               "image_mean", source),
            image_std=_triple(get(["image_processor.image_std", "image_processor.norm_std"], std),
                              "image_std", source),
            min_num_patches=get(["image_processor.min_num_patches", "vision_config.args.min_num_patches",
                                 "vision_config.min_num_patches"], 1024, int),
            max_num_patches=get(["image_processor.max_num_patches", "vision_config.args.max_num_patches",
                                 "vision_config.max_num_patches"], 13312, int),
            max_model_len=get(["image_processor.max_model_len"], 16384, int),
            video_mean=_triple(get(["video_processor.norm_mean"], mean), "video norm_mean", source),
            video_std=_triple(get(["video_processor.norm_std"], std), "video norm_std", source),
            video_target_num_patches=1024 if target is None else target,
            video_maintain_aspect_ratio=get(["video_processor.video_maintain_aspect_ratio",
                                             "vision_config.video_maintain_aspect_ratio"], True, bool),
            source=source,
        )

        # fields that must agree with the ViT built above
        for name in ("vision_hidden_size", "vit_hidden_size"):
            got = get([name], None, int)
            if got is not None and got != cfg.hidden_size:
                raise ConfigError(f"{source}: `{name}` = {got} but the vision tower is {cfg.hidden_size} wide")
        for name, want in (("image_processor.patch_size", cfg.patch_size),
                           ("video_processor.patch_size", cfg.patch_size),
                           ("image_processor.downsample_ratio", cfg.downsample_ratio),
                           ("video_processor.downsample_ratio", cfg.downsample_ratio),
                           ("video_processor.temporal_patch_size", cfg.temporal_patch_size)):
            got = get([name], None, float)
            if got is not None and got != want:
                raise ConfigError(f"{source}: `{name}` = {got:g} but the model's is {want:g}")
        for name, want in (("vision_config.hidden_act", "gelu"), ("ps_version", "v2")):
            got = get([name], want)
            if got != want:
                raise ConfigError(f"{source}: `{name}` = {got!r}: only {want!r} is supported")
        if get(["vision_config.use_swiglu_ffn"], False, bool) or get(["vision_config.num_channels"], 3, int) != 3:
            raise ConfigError(f"{source}: only the C-RADIO ViT (GELU MLP, 3 input channels) is supported")
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise ConfigError for any field the tower cannot run with."""
        def need(ok, name, why):
            if not ok:
                raise ConfigError(f"{self.source}: `{name}` = {getattr(self, name)!r}: {why}")

        for name in ("hidden_size", "num_layers", "num_heads", "mlp_hidden", "patch_size", "pos_grid",
                     "projector_hidden_size", "temporal_patch_size", "min_num_patches", "max_model_len"):
            need(getattr(self, name) >= 1, name, "must be at least 1")
        need(self.llm_hidden_size >= 1, "llm_hidden_size", "text_config.hidden_size must be given and positive")
        need(self.hidden_size % self.num_heads == 0, "hidden_size", f"not divisible by {self.num_heads} heads")
        need(self.num_cls_tokens >= 0 and self.num_registers >= 0, "num_registers", "token counts cannot be negative")
        need(self.layer_norm_eps > 0, "layer_norm_eps", "must be positive")
        need(0 < self.downsample_ratio <= 1 and abs(1 / self.downsample_ratio - self.merge) < 1e-9,
             "downsample_ratio", "must be 1/k for a whole k (0.5: 2x2 patches a token)")
        need(self.max_num_patches >= 0, "max_num_patches", "must be >= 0 (0: no cap)")
        need(self.video_target_num_patches >= self.merge ** 2, "video_target_num_patches",
             f"must be at least {self.merge ** 2} (one token)")
        for name in ("image_std", "video_std"):
            need(all(s > 0 for s in getattr(self, name)), name, "standard deviations must be positive")


def _typed(value, kind, where):
    if kind is None:
        return value
    ok = isinstance(value, bool) if kind is bool else (
        isinstance(value, (int, float)) and not isinstance(value, bool)
        and (kind is float or float(value).is_integer()))
    if not ok:
        raise ConfigError(f"{where} = {value!r}: expected {kind.__name__}")
    return kind(value)


def _triple(value, name, source) -> tuple[float, float, float]:
    try:
        out = tuple(float(x) for x in value)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3:
        raise ConfigError(f"{source}: `{name}` = {value!r}: expected three numbers (R, G, B)")
    return out


def read_processor_config(model_dir: str | Path) -> dict | None:
    """processor_config.json of a checkpoint folder (`save_pretrained`'s one file), or the separate
    preprocessor_config.json / video_preprocessor_config.json, as {"image_processor", "video_processor"}."""
    model_dir = Path(model_dir)
    files = {"": "processor_config.json", "image_processor": "preprocessor_config.json",
             "video_processor": "video_preprocessor_config.json"}
    out = {}
    for key, name in files.items():
        path = model_dir / name
        if not path.exists():
            continue
        try:
            d = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: not a JSON object")
        if key:
            out.setdefault(key, d)
        else:
            out.update({k: d[k] for k in ("image_processor", "video_processor") if isinstance(d.get(k), dict)})
    return out or None


# ---------------------------------------------------------------------------------------------
# pre-processing: grids, resize, normalize, patches
# ---------------------------------------------------------------------------------------------

def image_patch_grid(height: int, width: int, cfg: VisionConfig, num_images: int = 1) -> tuple[int, int]:
    """The (rows, cols) patch grid an image is resized to: about its own grid, scaled into
    [min_num_patches, max_num_patches], both sides a multiple of the pixel-shuffle block.

    `num_images` is how many images share one processor call (their common budget)."""
    _check_size(height, width, "image")
    m = cfg.merge
    budget = max((cfg.max_model_len - 4) * m * m, cfg.min_num_patches * num_images)
    if cfg.max_num_patches:
        budget = min(budget, cfg.max_num_patches)
    budget = max(budget, cfg.min_num_patches)

    gh = round(height / cfg.patch_size + 0.5)      # Python rounds halves to even: 64 px -> 4, 80 px -> 6
    gw = round(width / cfg.patch_size + 0.5)
    factor = min(math.sqrt(budget / (gh * gw)), 1.0)
    gh, gw = math.floor(factor * gh), math.floor(factor * gw)
    if gh * gw == 0:
        raise VisionInputError(f"image: {width}x{height} pixels is too elongated for a budget of {budget} patches")
    if budget > cfg.min_num_patches and gh * gw < cfg.min_num_patches:
        factor = math.sqrt(cfg.min_num_patches / (gh * gw))
        gh, gw = math.ceil(factor * gh), math.ceil(factor * gw)
    if gh % m:
        gh = gh + m - gh % m if (gh + m - gh % m) * gw <= budget else max(m, gh - gh % m)
    if gw % m:
        gw = gw + m - gw % m if gh * (gw + m - gw % m) <= budget else max(m, gw - gw % m)
    return gh, gw


def num_image_tokens(height: int, width: int, cfg: VisionConfig) -> int:
    """The `<image>` placeholders an image of this size expands to."""
    gh, gw = image_patch_grid(height, width, cfg)
    return gh * gw // cfg.merge ** 2


def video_grid(height: int, width: int, cfg: VisionConfig) -> tuple[int, int]:
    """The (rows, cols) patch grid every frame of a video is resized to: about
    `video_target_num_patches` patches, aspect kept, both sides a multiple of the shuffle block."""
    _check_size(height, width, "video")
    target, m = cfg.video_target_num_patches, cfg.merge
    if not cfg.video_maintain_aspect_ratio:
        side = max(m, int(math.sqrt(target)) // m * m)
        return side, side
    aspect = width / height
    ph = max(round(math.sqrt(target / aspect)), 1)
    pw = max(round(math.sqrt(target * aspect)), 1)
    up_h, up_w = ph + (m - ph % m) % m, pw + (m - pw % m) % m
    if up_h * up_w <= target:
        return up_h, up_w
    return max(m, ph - ph % m), max(m, pw - pw % m)


def tokens_per_tubelet(height: int, width: int, cfg: VisionConfig) -> int:
    """Projected tokens of each tubelet (frame group) of a video with frames of this size."""
    gh, gw = video_grid(height, width, cfg)
    return gh * gw // cfg.merge ** 2


def num_tubelets(num_frames: int, cfg: VisionConfig) -> int:
    """Tubelets of a clip: frames in groups of `temporal_patch_size`, a short last group padded."""
    return -(-num_frames // cfg.temporal_patch_size)


def image_to_patches(pixels: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, patches, C*p*p]: row-major patches, each channel-major (C, p, p)."""
    b, c, h, w = pixels.shape
    x = pixels.reshape(b, c, h // patch_size, patch_size, w // patch_size, patch_size)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // patch_size) * (w // patch_size), c * patch_size ** 2)


def preprocess_image(image, cfg: VisionConfig, device=None) -> tuple[torch.Tensor, tuple[int, int]]:
    """uint8 [H, W, 3] -> (float32 patches [gh*gw, 3*p*p], (gh, gw)), as the reference image processor."""
    image = _check_media(image, "image", 3)
    gh, gw = image_patch_grid(image.shape[0], image.shape[1], cfg)
    x = image.to(device).permute(2, 0, 1).unsqueeze(0).float().contiguous()
    x = _resize(x, gh * cfg.patch_size, gw * cfg.patch_size)
    # the reference folds 1/255 into the statistics: (x - 255 mean) / (255 std)
    mean = torch.tensor(cfg.image_mean, device=x.device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(cfg.image_std, device=x.device).view(1, 3, 1, 1) * 255.0
    return image_to_patches((x - mean) / std, cfg.patch_size)[0], (gh, gw)


def preprocess_video(frames, cfg: VisionConfig, device=None) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float32 tubelets [ceil(T / t), t*3, gh*p, gw*p] (t frames stacked on
    the channels, an odd last frame repeated), as the reference video processor."""
    frames = _check_media(frames, "video", 4)
    return _tubelet_pixels(frames, 0, num_tubelets(frames.shape[0], cfg), cfg, device)


def _tubelet_pixels(frames: torch.Tensor, first: int, stop: int, cfg: VisionConfig, device) -> torch.Tensor:
    """Tubelets first..stop-1 of a checked clip, pre-processed."""
    t = cfg.temporal_patch_size
    h, w = frames.shape[1:3]
    gh, gw = video_grid(h, w, cfg)
    clip = frames[first * t:stop * t]
    step = max(1, RESIZE_PIXELS // (h * w))      # the float copy of large source frames, a few at a time
    x = torch.cat([_resize(clip[i:i + step].to(device).permute(0, 3, 1, 2).float().contiguous(),
                           gh * cfg.patch_size, gw * cfg.patch_size) for i in range(0, clip.shape[0], step)])
    mean = torch.tensor(cfg.video_mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.video_std, device=x.device).view(1, 3, 1, 1)
    x = (x / 255.0 - mean) / std
    if x.shape[0] % t:                                    # the clip's odd last frame, repeated
        x = torch.cat([x, x[-1:].expand(t - x.shape[0] % t, -1, -1, -1)])
    return x.reshape(-1, t * 3, x.shape[-2], x.shape[-1])


def _resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bicubic, antialiased, on float 0..255 without clamping; only when the size changes."""
    if x.shape[-2:] == (height, width):
        return x
    return F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False, antialias=True)


def _check_size(height, width, name):
    if not (isinstance(height, (int, np.integer)) and isinstance(width, (int, np.integer))) or height < 1 or width < 1:
        raise VisionInputError(f"{name}: size {width}x{height} is empty or not whole pixels")
    if max(height, width) > MAX_SIDE or height * width > MAX_PIXELS:
        raise VisionInputError(f"{name}: {width}x{height} pixels is beyond the supported "
                               f"{MAX_SIDE} pixels a side / {MAX_PIXELS} pixels a frame")


def _check_media(x, name: str, ndim: int) -> torch.Tensor:
    """A uint8 RGB tensor [H, W, 3] (image) or [T, H, W, 3] (video), checked before any allocation."""
    layout = "[H, W, 3]" if ndim == 3 else "[T, H, W, 3]"
    if isinstance(x, np.ndarray):
        with warnings.catch_warnings():      # read-only arrays (e.g. from PIL) are only ever read here
            warnings.simplefilter("ignore")
            x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise VisionInputError(f"{name}: expected a uint8 tensor {layout}, got {type(x).__name__}")
    if x.dtype != torch.uint8:
        raise VisionInputError(f"{name}: expected dtype uint8 (RGB 0..255), got {x.dtype}")
    if x.dim() != ndim or x.shape[-1] != 3:
        raise VisionInputError(f"{name}: expected shape {layout} (RGB), got {list(x.shape)}")
    if x.numel() == 0:
        raise VisionInputError(f"{name}: empty, shape {list(x.shape)}")
    _check_size(int(x.shape[-3]), int(x.shape[-2]), name)
    return x


# ---------------------------------------------------------------------------------------------
# C-RADIO ViT
# ---------------------------------------------------------------------------------------------

class ClsToken(nn.Module):
    """The CLS and register tokens, prepended to every sequence and dropped at the end."""

    def __init__(self, num_tokens: int, width: int):
        super().__init__()
        self.token = nn.Parameter(torch.zeros(num_tokens, width))


class PatchGenerator(nn.Module):
    """Patch embedding (images: 3x16x16 patches; video: t frames of them), learned position grid, prefix tokens."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.pos_grid = cfg.pos_grid
        self.embedder = nn.Linear(cfg.patch_dim, cfg.hidden_size, bias=False)
        self.video_embedder = (nn.Linear(cfg.temporal_patch_size * cfg.patch_dim, cfg.hidden_size, bias=False)
                               if cfg.temporal_patch_size > 1 else None)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.pos_grid ** 2, cfg.hidden_size))
        self.cls_token = ClsToken(cfg.num_prefix_tokens, cfg.hidden_size)

    def position_embedding(self, rows: int, cols: int) -> torch.Tensor:
        """[rows*cols, width] fp32: the grid resized bilinearly (align_corners=False) to a square of
        the larger side, then its top-left rows x cols. Computed one axis at a time on just the
        rows and columns kept: the square itself can be gigabytes for a long, thin image."""
        g, side = self.pos_grid, max(rows, cols)
        x = self.pos_embed.float().view(g, g, -1)
        order = ((0, rows), (1, cols)) if rows <= cols else ((1, cols), (0, rows))   # smaller intermediate
        for dim, keep in order:
            i0, i1, w0, w1 = _linear_taps(g, side, keep, x.device)
            shape = (-1, 1, 1) if dim == 0 else (1, -1, 1)
            x = x.index_select(dim, i0) * w0.view(shape) + x.index_select(dim, i1) * w1.view(shape)
        return x.reshape(rows * cols, -1)

    def forward(self, patches: torch.Tensor, grid: tuple[int, int], video: bool = False,
                pos: torch.Tensor | None = None) -> torch.Tensor:
        embed = self.video_embedder if video else self.embedder
        x = embed(patches)
        pos = self.position_embedding(*grid) if pos is None else pos
        x = x + pos.to(x.dtype)
        prefix = self.cls_token.token.to(x.dtype).expand(x.shape[0], -1, -1)
        return torch.cat([prefix, x], dim=1)


def _linear_taps(n_in: int, n_out: int, keep: int, device):
    """Source indices and weights of the first `keep` outputs of a linear resize n_in -> n_out
    with align_corners=False (F.interpolate's rule: src = (i + 0.5) * n_in / n_out - 0.5, >= 0)."""
    src = ((torch.arange(keep, device=device, dtype=torch.float32) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    i0 = src.long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    w1 = src - i0
    return i0, i1, 1 - w1, w1


class Attention(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=cfg.qkv_bias)
        self.proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)          # bidirectional, scale head_dim ** -0.5
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.mlp_hidden)
        self.fc2 = nn.Linear(cfg.mlp_hidden, cfg.hidden_size)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))                 # exact (erf) GELU


class Block(nn.Module):
    """Pre-norm ViT block (RADIO's layer scales are all 1 and omitted)."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = Mlp(cfg)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class RadioViT(nn.Module):
    """C-RADIO's ViT (`vision_model.radio_model.model`): no final norm; returns the patch features."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.num_prefix_tokens = cfg.num_prefix_tokens
        self.patch_generator = PatchGenerator(cfg)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))

    def forward(self, patches, grid, video=False, pos=None):
        """[B, gh*gw, patch dim] -> [B, gh*gw, width]."""
        x = self.patch_generator(patches, grid, video, pos)
        for block in self.blocks:
            x = block(x)
        return x[:, self.num_prefix_tokens:]


# ---------------------------------------------------------------------------------------------
# the tower
# ---------------------------------------------------------------------------------------------

def pixel_shuffle(x: torch.Tensor, merge: int = 2) -> torch.Tensor:
    """[B, gh, gw, C] -> [B, gh/m, gw/m, C*m*m]: each m x m block of patches becomes one token,
    channels in row-major block order: cat(x[2i,2j], x[2i,2j+1], x[2i+1,2j], x[2i+1,2j+1]) for m = 2."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // merge, merge, w // merge, merge, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h // merge, w // merge, merge * merge * c)


class SquaredReLU(nn.Module):
    def forward(self, x):
        return F.relu(x).square()


class VisionTower(nn.Module):
    """C-RADIO ViT + optional final LayerNorm + pixel shuffle + `mlp1`, named as the checkpoint."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.vision_model = nn.ModuleDict({"radio_model": nn.ModuleDict({"model": RadioViT(cfg)})})
        if cfg.final_layernorm:   # Megatron adds it to every block of an MTP model's config, the ViT's too
            self.vision_projector = nn.ModuleDict(
                {"vision_final_layernorm": nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)})
        shuffled = cfg.hidden_size * cfg.merge ** 2
        self.mlp1 = nn.Sequential(
            RMSNorm(shuffled, cfg.projector_eps),
            nn.Linear(shuffled, cfg.projector_hidden_size, bias=False),
            SquaredReLU(),
            nn.Linear(cfg.projector_hidden_size, cfg.llm_hidden_size, bias=False),
        )

    @property
    def vit(self) -> RadioViT:
        return self.vision_model.radio_model.model

    @property
    def dtype(self) -> torch.dtype:
        return self.mlp1[1].weight.dtype

    @property
    def device(self) -> torch.device:
        return self.mlp1[1].weight.device

    def forward(self, patches: torch.Tensor, grid: tuple[int, int], video: bool = False,
                pos: torch.Tensor | None = None) -> torch.Tensor:
        """Pre-processed patches [B, gh*gw, patch dim] (images) or tubelet patches [B, gh*gw, t*patch dim]
        (video=True) -> projected tokens [B, gh*gw / merge^2, llm_hidden]."""
        gh, gw = grid
        x = self.vit(patches.to(self.dtype), grid, video, pos)
        if self.cfg.final_layernorm:
            x = self.vision_projector.vision_final_layernorm(x)
        x = pixel_shuffle(x.view(x.shape[0], gh, gw, -1), self.cfg.merge)
        return self.mlp1(x.flatten(1, 2))

    @torch.inference_mode()
    def encode_image(self, image) -> torch.Tensor:
        """uint8 [H, W, 3] RGB -> [num_image_tokens(H, W), llm_hidden]."""
        patches, grid = preprocess_image(image, self.cfg, self.device)
        return self(patches.unsqueeze(0), grid)[0]

    @torch.inference_mode()
    def encode_video(self, frames, batch_tokens: int = DEFAULT_BATCH_TOKENS) -> torch.Tensor:
        """uint8 [T, H, W, 3] RGB frames -> [num_tubelets, tokens_per_tubelet, llm_hidden].

        Tubelets go through pre-processing and the ViT in batches of about `batch_tokens` sequence
        tokens, so memory beyond the result stays flat however long the clip."""
        frames = _check_media(frames, "video", 4)
        cfg = self.cfg
        gh, gw = video_grid(frames.shape[1], frames.shape[2], cfg)
        n, per = num_tubelets(frames.shape[0], cfg), gh * gw // cfg.merge ** 2
        if n * per > MAX_VIDEO_TOKENS:
            raise VisionInputError(f"video: {frames.shape[0]} frames make {n * per} tokens, beyond the "
                                   f"{MAX_VIDEO_TOKENS} one video may have; sample fewer frames")
        out = torch.empty(n, per, cfg.llm_hidden_size, dtype=self.dtype, device=self.device)
        pos = self.vit.patch_generator.position_embedding(gh, gw)
        step = max(1, batch_tokens // (gh * gw + cfg.num_prefix_tokens))
        for first in range(0, n, step):
            stop = min(n, first + step)
            pixels = _tubelet_pixels(frames, first, stop, cfg, self.device)
            out[first:stop] = self(image_to_patches(pixels, cfg.patch_size), (gh, gw),
                                   video=cfg.temporal_patch_size > 1, pos=pos)
        return out


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------

_TOWER_PREFIXES = ("vision_model.", "mlp1.", "vision_projector.")


def _checkpoint_name(key: str) -> str | None:
    """Checkpoint key -> tower module name; None for other towers' tensors and the ones the tower
    ignores: RADIO's input normalization (done in pre-processing), its summary indices, and its
    layer scales (checked to be 1 by `load_vision_tower`)."""
    if not key.startswith(_TOWER_PREFIXES):
        return None
    if (key.startswith("vision_model.radio_model.input_conditioner.") or key == "vision_model.radio_model.summary_idxs"
            or ".layer_scale" in key):
        return None
    return key


def load_vision_tower(raw_config: dict, tensors: dict, dtype: torch.dtype = torch.float32, device: str = "cpu",
                      processor_config: dict | None = None, where: str = "checkpoint") -> VisionTower:
    """The vision tower of an Omni / VL checkpoint, ready for inference.

    raw_config: the parsed config.json; tensors: engine.loader.open_checkpoint(dir);
    processor_config: the parsed processor_config.json (image / video processor settings)."""
    cfg = VisionConfig.from_dict(raw_config, processor_config, source=where)
    for key in tensors:
        if key.startswith("vision_model.") and ".layer_scale" in key:
            scale = tensors[key].tensor(key, torch.float32)
            if not torch.all(scale == 1):
                raise LoadError(f"{where}: {key!r} is not all ones (max |1 - x| = {float((scale - 1).abs().max()):g}); "
                                "this tower has no layer scales")
    with torch.device("meta"):
        tower = VisionTower(cfg)
    return load_weights(tower, tensors, "", dtype, device, where=where, rename=_checkpoint_name)


def load_vision_tower_dir(model_dir: str | Path, dtype: torch.dtype | None = None, device: str = "cpu") -> VisionTower:
    """load_vision_tower for a checkpoint folder (config.json, processor files, safetensors)."""
    from engine.config import read_config_json
    raw, _ = read_config_json(model_dir)
    tensors = open_checkpoint(model_dir)
    dtype = dtype or checkpoint_dtype(raw) or torch.float32
    return load_vision_tower(raw, tensors, dtype, device, read_processor_config(model_dir), where=str(model_dir))
