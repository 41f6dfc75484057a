"""UI benchmark in a real browser: time to the first streamed token, as a person sees it.

    python bench/ui.py [--model DIR] [--clip FILE] [--asks 5] [--uploads 3] [--quick] [--json]

Playwright drives Debian's chromium (as tests/test_ui_browser.py does) against the app on a free
127.0.0.1 port, and times in the page (performance.now()):

1. Ask to first token: from the click on Ask to the first token of the answer drawn in the page,
   for a text question with no media, with `--model` (default: the bundled default model). The
   first ask of a page also opens the session (WebSocket connect); it is reported apart.
2. Upload to first token: a 1 minute demo clip is uploaded and Ask is clicked as soon as the
   upload is in the page (the server decodes and encodes the clip, then answers); from the end
   of the upload (Gradio hands the file to the page) to the first token drawn. Split into the
   time to take the clip in (decode + encode: `conversation.item.done`) and the rest. The clip is
   `--clip`, else the first clip of assets/demo/ of 50 s or more, else one made by
   recipes.synthetic (60 s). A model without a vision tower (the placeholder default model)
   cannot take a clip: this part then runs the tiny random Omni checkpoint of the tests and says so.

Figures are noisy on a shared CPU; medians are reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import hf_oracle  # noqa: E402

hf_oracle.prepare()

from app.server import ServerConfig, create_app  # noqa: E402
from service_fixtures import RunningServer  # noqa: E402
from ui_fixtures import launch_chromium, make_demo_folder  # noqa: E402

DEFAULT_MODEL = ROOT / "assets" / "default-model"

# Times the click on Ask (capture phase: before Gradio's handler) and the first answer text drawn.
PROBE = """() => {
  window.__bench = {click: null, first: null};
  document.getElementById('omni-ask').addEventListener('click', () => {
    __bench.click = performance.now(); __bench.first = null; }, true);
  new MutationObserver(() => {
    const t = document.querySelector('.omni-turn');
    if (__bench.click === null || __bench.first !== null || !t) return;
    const answer = t.querySelector('.omni-answer-text');
    if (t.querySelector('.omni-step') || (answer && answer.textContent.length)) __bench.first = performance.now();
  }).observe(document.querySelector('.omni-answers'), {subtree: true, childList: true, characterData: true});
}"""


def has_vision(model: Path) -> bool:
    cfg = json.loads((Path(model) / "config.json").read_text())
    return "vision_config" in cfg or "vit_hidden_size" in cfg


def find_clip(min_s: float = 50.0) -> Path | None:
    from encoders.media import probe
    demo = ROOT / "assets" / "demo"
    for p in sorted(demo.rglob("*")) if demo.is_dir() else []:
        if p.suffix.lower() in (".mp4", ".webm", ".mov", ".mkv"):
            try:
                if (probe(str(p)).duration or 0) >= min_s:
                    return p
            except ValueError:
                continue
    return None


def open_page(browser, port: int):
    ctx = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = ctx.new_page()
    page.goto(f"http://127.0.0.1:{port}/")
    page.wait_for_function("(document.getElementById('omni-model')?.textContent || 'connecting').indexOf('connecting') < 0",
                           timeout=60000)
    page.evaluate(PROBE)
    return ctx, page


def wait_answer(page, n_before: int, timeout_s: float):
    page.wait_for_function(f"document.querySelectorAll('.omni-turn').length > {n_before} && "
                           "['completed', 'incomplete', 'failed', 'cancelled', 'refused']"
                           ".includes(document.querySelector('.omni-turn').dataset.status)", timeout=timeout_s * 1000)
    return page.evaluate("__bench")


def ask_to_first_token(browser, port: int, asks: int, max_tokens: int) -> dict:
    ctx, page = open_page(browser, port)
    try:
        page.locator("#omni-sampling").click()                     # open the accordion, set a short answer
        page.locator("#omni-max-tokens input[type=number]").fill(str(max_tokens))
        page.locator("#omni-max-tokens input[type=number]").press("Enter")
        times = []
        for i in range(asks + 1):
            page.locator("#omni-question textarea").fill(f"Why is the sky blue? ({i})")
            n = page.locator(".omni-turn").count()
            page.locator("#omni-ask").click()
            b = wait_answer(page, n, 300)
            if b["first"] is None:
                raise RuntimeError("the answer had no text")
            times.append(b["first"] - b["click"])
        return {"first_ask_ms": round(times[0], 1), "ask_to_first_token_ms_median": round(statistics.median(times[1:]), 1),
                "ask_to_first_token_ms_all": [round(t, 1) for t in times[1:]]}
    finally:
        ctx.close()


def upload_to_first_token(browser, port: int, clip: Path, uploads: int) -> dict:
    rows = []
    for _ in range(uploads):
        ctx, page = open_page(browser, port)
        try:
            page.locator("#omni-question textarea").fill("What happens in this clip? Reason step by step with "
                                                         "timestamps before answering.")
            t_set = time.perf_counter()
            page.locator("#omni-upload input[type=file]").set_input_files(str(clip))
            page.wait_for_function("window.omniUI.source?.itemId && window.omniUI.os?.ws?.readyState === 1",
                                   timeout=120000)
            page.locator("#omni-ask").click()
            t_upload = time.perf_counter() - t_set
            b = wait_answer(page, 0, 600)
            page.wait_for_function("window.omniUI.source.encoding === false", timeout=600000)
            s = page.evaluate("(s => ({uploaded: s.uploadedAt, taken: s.takenAt, total: s.totalMs}))(omniUI.source)")
            rows.append({"upload_end_to_first_token_ms": b["first"] - s["uploaded"],
                         "upload_s_gradio": t_upload, "clip_ms": s["total"],
                         "take_in_ms": s["taken"] - s["uploaded"] if s.get("taken") else None})
        finally:
            ctx.close()
    med = lambda k: round(statistics.median(r[k] for r in rows), 1) if all(r[k] is not None for r in rows) else None
    return {"clip": str(clip), "clip_s": round((rows[0]["clip_ms"] or 0) / 1000, 1),
            "upload_end_to_first_token_ms_median": med("upload_end_to_first_token_ms"),
            "of_which_take_in_ms_median": med("take_in_ms"),
            "gradio_upload_s_median": round(statistics.median(r["upload_s_gradio"] for r in rows), 2),
            "upload_end_to_first_token_ms_all": [round(r["upload_end_to_first_token_ms"], 1) for r in rows]}


def serve(model: Path, name: str):
    return RunningServer(create_app(ServerConfig(model_dir=model, model_name=name, vad="energy")))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--clip", type=Path, default=None)
    p.add_argument("--asks", type=int, default=5)
    p.add_argument("--uploads", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--quick", action="store_true", help="2 asks, 1 upload of a 20 s clip")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.asks, args.uploads = 2, 1
    from playwright.sync_api import sync_playwright
    out = {"model": str(args.model)}
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        browser = launch_chromium(pw)
        srv = serve(args.model, args.model.name)
        try:
            out["ask"] = ask_to_first_token(browser, srv.port, args.asks, args.max_tokens)
            clip_model = args.model
            if not has_vision(args.model):
                from omni_builders import build_omni_checkpoint
                clip_model = Path(tmp) / "tiny-omni"
                build_omni_checkpoint(clip_model)
                out["upload_model"] = f"tiny random Omni of the tests ({args.model.name} has no vision tower)"
                srv.stop()
                srv = serve(clip_model, "tiny-omni")
            clip = args.clip or (None if args.quick else find_clip())
            if clip is None:
                seconds = 20 if args.quick else 60
                clip = next((make_demo_folder(Path(tmp) / "demo", seconds=seconds) / "clips").glob("*.mp4"))
            out["upload"] = upload_to_first_token(browser, srv.port, clip, args.uploads)
        finally:
            srv.stop()
            browser.close()
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k}: {v}")


if __name__ == "__main__":
    main()
