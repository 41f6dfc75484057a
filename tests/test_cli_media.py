"""`python -m app generate` with media files: real files in, the reference's answer out."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.tokenizer import build_chat_prompt
from omni_builders import build_omni_checkpoint
from test_cli import last_json, run_cli

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"
needs_media = pytest.mark.skipif(not MEDIA.is_dir(), reason=f"{MEDIA} (the shared test media) is absent")


@pytest.fixture(scope="module")
def omni_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("omni_cli")
    model, processor = build_omni_checkpoint(d)
    return d, model, processor


@needs_media
def test_image_file_answer_equals_transformers(omni_dir):
    """A real JPEG through our decoder, towers and decoder gives transformers' greedy answer."""
    from PIL import Image
    d, hf, proc = omni_dir
    out = last_json(run_cli("--model", str(d), "--image", str(MEDIA / "rocket.jpg"), "--prompt", "What is this?",
                            "--greedy", "--max-new-tokens", "6", "--json"))
    text = build_chat_prompt([{"role": "user", "content": "<image>\nWhat is this?"}], reasoning=True)
    inputs = proc(text=text, images=[Image.open(MEDIA / "rocket.jpg").convert("RGB")], return_tensors="pt")
    assert out["prompt_ids"] == inputs["input_ids"][0].tolist()
    with torch.no_grad():
        ref = hf.generate(**inputs, max_new_tokens=6, do_sample=False)[0, inputs["input_ids"].shape[1]:].tolist()
    assert out["output_ids"] == ref[:len(out["output_ids"])] and len(out["output_ids"]) == min(6, len(ref))
    assert out["token_counts"]["image"] == int((inputs["input_ids"] == 18).sum())


@needs_media
def test_video_audio_and_raw_placeholders(omni_dir):
    d, _, _ = omni_dir
    video = str(MEDIA / "flipping_a_pancake.mkv")
    full = last_json(run_cli("--model", str(d), "--video", video, "--video-audio", "--num-frames", "6",
                             "--prompt", "What happens?", "--greedy", "--max-new-tokens", "2", "--json"))
    counts = full["token_counts"]
    assert counts["video"] == 3 * 8 and counts["audio"] > 0          # 6 frames -> 3 tubelets of 8 tokens
    pruned = last_json(run_cli("--model", str(d), "--video", video, "--num-frames", "6", "--evs", "0.5",
                               "--prompt", "What happens?", "--greedy", "--max-new-tokens", "2", "--json"))
    assert pruned["token_counts"]["video"] == 12
    # --raw: the prompt's own placeholders decide the order (audio first here)
    raw = last_json(run_cli("--model", str(d), "--raw", "--prompt", "<so_embedding> then <image>",
                            "--image", str(MEDIA / "chelsea.png"), "--audio", str(MEDIA / "jfk.flac"),
                            "--greedy", "--max-new-tokens", "2", "--json"))
    ids = raw["prompt_ids"]
    assert ids.index(25) < ids.index(19)                             # <so_start> before <img>
    assert raw["token_counts"]["audio"] == 138                       # 11 s: ceil((1 + 176000 // 160) / 8)


def test_media_errors_name_the_file(omni_dir, tmp_path):
    d, _, _ = omni_dir
    bad = tmp_path / "notes.mp4"
    bad.write_text("this is not a video")
    r = run_cli("--model", str(d), "--video", str(bad), "--prompt", "hi")
    assert r.returncode == 2 and str(bad) in r.stderr and "Traceback" not in r.stderr
    r = run_cli("--model", str(d), "--raw", "--prompt", "<image> <image>", "--image", str(bad))
    assert r.returncode == 2 and "names" in r.stderr
    r = run_cli("--model", str(d), "--video", str(bad), "--fps", "1", "--num-frames", "3", "--prompt", "hi")
    assert r.returncode == 2 and "--fps or --num-frames" in r.stderr
