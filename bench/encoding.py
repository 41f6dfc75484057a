"""Encoder benchmark: token budgets, real-time factors and memory of the audio and vision towers.

Three tables:

* Token budget: tokens per minute of video (1 and 2 fps, 512x512 frames, the released vision
  processor's 1024-patch frame tile) and of audio, with each token reduction off and on (pixel
  shuffle, tubelets, EVS at 0.5/0.7/0.9, audio 8x subsampling), against the naive count (one
  token per 16x16 patch per frame; one per 10 ms mel frame). Counts come from the same functions
  prompt building uses (encoders.vision, encoders.audio, kernels.evs).
* Speed: media seconds encoded per wall second (real-time factor), decoding included, for the
  default model's tower sizes and a mid-size configuration: audio through `AudioStream` fed by
  `iter_audio`, video at 1 fps through `iter_video_frames` and `encode_video`, both from a
  synthetic H.264 + AAC clip (recipes.synthetic), CPU, fp32, 2 threads.
* Memory: peak RSS of a subprocess that streams 5, 10 and 30 minutes of audio, and of video at
  1 fps, through the default-size towers: flat in duration means the encoders hold only their
  carry-over, whatever the length.

Run from the repo root: `python bench/encoding.py [--quick] [--json PATH]`.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import argparse
import json
import math
import os
import resource
import subprocess
import time

import torch

from encoders.audio import AudioConfig, AudioStream, AudioTower, slaney_mel_filters
from encoders.vision import VisionConfig, VisionTower, num_image_tokens, num_tubelets, tokens_per_tubelet
from kernels.evs import evs_num_kept

MEDIA = ROOT / ".cache" / "bench-media"
DEFAULT_MODEL = ROOT / "assets" / "default-model"
THREADS = 2
TARGETS = {"audio_rtf": 200.0, "video_rtf": 20.0, "token_reduction": 8.0}

# Mid-size towers: between the default model's and the released ones (ViT-H, 24-layer Parakeet).
MID_VISION = dict(hidden_size=256, num_layers=8, num_heads=4, mlp_hidden=1024, projector_hidden_size=1024,
                  llm_hidden_size=512, pos_grid=64, num_cls_tokens=2, num_registers=2,
                  video_target_num_patches=1024)
MID_AUDIO = dict(hidden_size=256, num_hidden_layers=8, num_attention_heads=4, head_dim=64, intermediate_size=1024,
                 subsampling_conv_channels=64, projection_hidden_size=1024, llm_hidden_size=512)


# ------------------------------------------------------------------------------------------------
# token budget
# ------------------------------------------------------------------------------------------------
def token_budget() -> dict:
    """Tokens per minute of media, reductions off/on (released processor settings)."""
    v = VisionConfig()                                   # released defaults: 16 px patches, 1024-patch tiles
    a = AudioConfig()
    side = 512
    naive_frame = (side // v.patch_size) ** 2            # one token per patch, native resolution
    tile = tokens_per_tubelet(side, side, v)             # the 1024-patch tile after pixel shuffle
    rows = []
    for fps in (1, 2):
        frames = 60 * fps
        tub = num_tubelets(frames, v)
        per = tile
        rows.append({"media": f"video {fps} fps, {side}x{side}", "naive": frames * naive_frame,
                     "pixel shuffle": frames * num_image_tokens(side, side, VisionConfig(min_num_patches=1024,
                                                                                        max_num_patches=1024)),
                     "+ tubelets": tub * per,
                     **{f"+ EVS {q}": evs_num_kept(tub, per, q) for q in (0.5, 0.7, 0.9)}})
    samples = 60 * a.sampling_rate
    mel_frames = sum(1 + n // a.hop_length for n in a.clip_sizes(samples))
    rows.append({"media": "audio", "naive": mel_frames, "8x subsampling": a.num_audio_tokens(samples)})
    video1 = rows[0]
    all_on = {"naive": video1["naive"] + rows[2]["naive"],
              "reduced": video1["+ EVS 0.7"] + rows[2]["8x subsampling"]}
    all_on["ratio"] = all_on["naive"] / all_on["reduced"]
    return {"rows": rows, "video_1fps_plus_audio_all_on": all_on}


# ------------------------------------------------------------------------------------------------
# towers with random weights
# ------------------------------------------------------------------------------------------------
def default_tower_configs() -> tuple[VisionConfig, AudioConfig, str]:
    """The bundled default model's tower configs (from recipes/train/config.py, the shape it is
    trained at, while assets/ still holds the text-only placeholder)."""
    from engine.config import read_config_json
    from encoders.vision import read_processor_config
    raw, _ = read_config_json(DEFAULT_MODEL)
    if "vision_config" in raw and (raw.get("audio_config") or raw.get("sound_config")):
        return (VisionConfig.from_dict(raw, read_processor_config(DEFAULT_MODEL)), AudioConfig.from_dict(raw),
                "the bundled default model")
    from recipes.train.config import omni_config, processor_config
    raw = omni_config()
    return (VisionConfig.from_dict(raw, processor_config()), AudioConfig.from_dict(raw),
            "the default model's shape (recipes/train/config.py)")


@torch.no_grad()
def random_towers(vcfg: VisionConfig, acfg: AudioConfig, seed: int = 0) -> tuple[VisionTower, AudioTower]:
    torch.manual_seed(seed)
    vision, audio = VisionTower(vcfg), AudioTower(acfg)
    for tower in (vision, audio):
        for name, p in list(tower.named_parameters()) + list(tower.named_buffers()):
            if not p.is_floating_point():
                continue
            if name.endswith("running_var"):
                p.uniform_(0.5, 1.5)
            elif p.ndim == 1:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
            else:
                p.normal_(0, 1 / math.sqrt(max(1, p[0].numel())))
    audio.mel_filters = slaney_mel_filters(acfg.sampling_rate, acfg.n_fft, acfg.num_mel_bins)
    return vision.eval(), audio.eval()


# ------------------------------------------------------------------------------------------------
# media and the two encode loops (what the encoder service does with a file)
# ------------------------------------------------------------------------------------------------
def clip(seconds: int) -> Path:
    """A synthetic H.264 + AAC clip of `seconds`, generated once into .cache/bench-media."""
    out = MEDIA / f"{seconds}s"
    path = out / "clips" / "s1-c00000.mp4"
    if not path.exists():
        subprocess.run([sys.executable, "-m", "recipes.synthetic", "generate", "--seed", "1", "--clips", "1",
                        "--min-seconds", str(seconds), "--max-seconds", str(seconds), "--out", str(out), "--quiet"],
                       cwd=ROOT, check=True)
    return path


@torch.inference_mode()
def encode_audio_file(audio: AudioTower, path: Path, seconds: float | None = None) -> int:
    from encoders.media import iter_audio
    stream, tokens = AudioStream(audio), 0
    for piece in iter_audio(path, chunk_seconds=5.0, end=seconds):
        tokens += sum(c.embeddings.shape[0] for c in stream.push(piece))
    return tokens + sum(c.embeddings.shape[0] for c in stream.flush())


@torch.inference_mode()
def encode_video_file(vision: VisionTower, path: Path, fps: float = 1.0, seconds: float | None = None,
                      batch_frames: int = 16) -> int:
    from encoders.media import iter_video_frames
    frames, tokens = [], 0
    for t, frame in iter_video_frames(path, fps=fps):
        if seconds is not None and t >= seconds:
            break
        frames.append(frame)
        if len(frames) == batch_frames:
            tokens += vision.encode_video(torch.stack(frames))[:, :, 0].numel()
            frames = []
    if frames:
        tokens += vision.encode_video(torch.stack(frames))[:, :, 0].numel()
    return tokens


def speed(name: str, vcfg: VisionConfig, acfg: AudioConfig, path: Path, seconds: float, repeats: int) -> dict:
    vision, audio = random_towers(vcfg, acfg)
    out = {"towers": name}
    for kind, fn in (("audio", lambda: encode_audio_file(audio, path)), ("video", lambda: encode_video_file(vision, path))):
        fn()                                              # warm-up
        best = min(_timed(fn) for _ in range(repeats))
        out[f"{kind}_rtf"] = seconds / best
        out[f"{kind}_s"] = best
    return out


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# ------------------------------------------------------------------------------------------------
# memory: one subprocess per (kind, duration)
# ------------------------------------------------------------------------------------------------
def memory_worker(kind: str, path: str, seconds: float) -> None:
    torch.set_num_threads(THREADS)
    vcfg, acfg, _ = default_tower_configs()
    vision, audio = random_towers(vcfg, acfg)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    tokens = (encode_audio_file(audio, Path(path), seconds) if kind == "audio"
              else encode_video_file(vision, Path(path), 1.0, seconds))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"kind": kind, "seconds": seconds, "tokens": tokens, "peak_mb": peak, "before_mb": base,
                      "wall_s": time.perf_counter() - t}))


def memory(kind: str, path: Path, seconds: float) -> dict:
    r = subprocess.run([sys.executable, __file__, "--memory-worker", kind, str(path), str(seconds)], cwd=ROOT,
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------
def report(res: dict) -> None:
    tb = res["token_budget"]
    print("\n## Token budget (tokens per minute)\n")
    print("| media | naive | pixel shuffle | + tubelets | + EVS 0.5 | + EVS 0.7 | + EVS 0.9 | 8x subsampling |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in tb["rows"]:
        cells = [r.get(k) for k in ("naive", "pixel shuffle", "+ tubelets", "+ EVS 0.5", "+ EVS 0.7", "+ EVS 0.9",
                                    "8x subsampling")]
        print(f"| {r['media']} | " + " | ".join(f"{c:,}" if c is not None else "" for c in cells) + " |")
    a = tb["video_1fps_plus_audio_all_on"]
    print(f"\nVideo at 1 fps + its audio, all reductions on (EVS 0.7): {a['reduced']:,} tokens a minute against "
          f"{a['naive']:,} naive: **{a['ratio']:.1f}x fewer** (target >= {TARGETS['token_reduction']:.0f}x).")
    if "speed" in res:
        print(f"\n## Encoder speed (CPU, fp32, {THREADS} threads, decoding included; {res['speed_clip_s']:.0f} s clip)\n")
        print("| towers | audio: real-time factor | video at 1 fps: real-time factor |")
        print("|---|---:|---:|")
        for r in res["speed"]:
            print(f"| {r['towers']} | {r['audio_rtf']:.0f}x | {r['video_rtf']:.0f}x |")
        d = res["speed"][0]
        print(f"\nTargets with the default model: audio >= {TARGETS['audio_rtf']:.0f}x "
              f"({'met' if d['audio_rtf'] >= TARGETS['audio_rtf'] else 'NOT met'}), video >= "
              f"{TARGETS['video_rtf']:.0f}x ({'met' if d['video_rtf'] >= TARGETS['video_rtf'] else 'NOT met'}).")
    if "memory" in res:
        print("\n## Peak memory while streaming a long file (default-size towers)\n")
        print("| media | duration | tokens | peak RSS | wall |")
        print("|---|---:|---:|---:|---:|")
        for r in res["memory"]:
            print(f"| {r['kind']} | {r['seconds'] / 60:.0f} min | {r['tokens']:,} | {r['peak_mb']:.0f} MB | "
                  f"{r['wall_s']:.1f} s |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short clips, one repeat, 5 minutes of memory test")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--memory-worker", nargs=3, metavar=("KIND", "PATH", "SECONDS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_worker:
        kind, path, seconds = args.memory_worker
        memory_worker(kind, path, float(seconds))
        return 0
    torch.set_num_threads(THREADS)
    res = {"token_budget": token_budget()}
    vcfg, acfg, default_name = default_tower_configs()
    seconds = 20 if args.quick else 60
    path = clip(seconds)
    res["speed_clip_s"] = seconds
    res["speed"] = [speed(f"default ({default_name})", vcfg, acfg, path, seconds, 1 if args.quick else 3),
                    speed("mid-size (ViT 256x8, conformer 256x8)", VisionConfig(**MID_VISION), AudioConfig(**MID_AUDIO),
                          path, seconds, 1 if args.quick else 2)]
    durations = [300] if args.quick else [300, 600, 1800]
    long_clip = clip(max(durations))
    res["memory"] = [memory(kind, long_clip, d) for kind in ("audio", "video") for d in durations]
    report(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
