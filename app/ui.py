"""The UI: a Gradio 6 Blocks app mounted at `/` of the API's FastAPI app (one process, one port).

Upload a video, an audio file or images, or stream the microphone (and the camera), ask at any
moment, and read the answer as it streams: the reasoning as a timeline of time-stamped steps
(a click seeks the player to the step's start, in the browser), the media under it as a
waveform and a strip of video thumbnails with the reasoning's spans drawn on it and the answer's
evidence highlighted.

The page talks to the model only through the public API, like any other client: its browser half
(app/static/ui/ui.js, on omnistream.js) opens WS /v1/realtime, sends the media and the questions,
and draws the events it gets back (answer deltas, `media_timestamp` annotations, `media.progress`,
errors); it reads GET /health for the model line. Gradio lays out the inputs (upload, buttons,
question, reasoning and sampling settings, example questions and the demo clips of assets/demo/)
and its events run in the browser (`js=`), so answers never queue behind Gradio's workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import os
from pathlib import Path

# Gradio must not phone home; set before it is imported.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("GRADIO_RUN_HISTORY", "False")

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "assets" / "default-model"
DEMO_DIR = ROOT / "assets" / "demo"

VIDEO_EXT = (".mp4", ".webm", ".mov", ".mkv", ".m4v", ".avi")
AUDIO_EXT = (".wav", ".mp3", ".flac", ".ogg", ".oga", ".opus", ".m4a", ".aac")
IMAGE_EXT = (".jpg", ".jpeg", ".png")
MEDIA_EXT = VIDEO_EXT + AUDIO_EXT + IMAGE_EXT
MAX_DEMO_ROWS = 60

EXAMPLE_QUESTIONS = [
    "What happens in this clip? List every thing seen and heard, with its time span.",
    "When is the first word spoken? Answer with its time span.",
    "List every sound you hear, each with its time span.",
    "What is on screen when the bell rings?",
    "What did I just say?",
]
CHECKPOINT_HINT = ("Load a real checkpoint with: python -m app --model DIR (a Hugging Face folder: config.json, "
                   "safetensors weights, tokenizer.json), e.g. NVIDIA Nemotron 3 Nano Omni.")


def default_model_note(model_dir: Path | None, default: Path = DEFAULT_MODEL) -> str:
    """One line on the bundled default model (what it was trained on, how to load a real one); ''
    for any other model."""
    if model_dir is None or Path(model_dir).resolve() != Path(default).resolve():
        return ""
    card = Path(default) / "README.md"
    if card.is_file():                           # the model's own card says best what it learned
        about = _first_paragraph(card.read_text(encoding="utf-8", errors="replace"))
    elif _has_towers(Path(default) / "config.json"):
        about = ("The bundled default model is a small Omni model trained from scratch on synthetic clips "
                 "(coloured shapes and words on screen, spoken words, tones and noises; recipes/train): it "
                 "answers about such clips, with time spans, and knows nothing of the real world.")
    else:
        about = ("The bundled default model is a small text-only placeholder with random weights "
                 "(assets/README.md): it answers nonsense and takes no media.")
    return f"{about} {CHECKPOINT_HINT}"


def _has_towers(config: Path) -> bool:
    import json
    try:
        raw = json.loads(config.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and ("vision_config" in raw or "audio_config" in raw)


def _first_paragraph(text: str) -> str:
    lines, para = text.splitlines(), []
    if lines and lines[0].strip() == "---":              # YAML front matter of Hugging Face model cards
        end = next((i for i, l in enumerate(lines[1:], 1) if l.strip() == "---"), 0)
        lines = lines[end + 1:]
    for line in lines:
        s = line.strip()
        if s.startswith("#") and not para:
            continue
        if not s:
            if para:
                break
            continue
        para.append(s)
    return " ".join(para)[:400]


def demo_examples(demo_dir: Path) -> list[tuple[str, str, str]]:
    """(clip path, question, label) rows for the demo clips of `demo_dir`:

    - suggested.json (recipes.train's demo: per clip its free-form questions and one multiple-choice
      prompt per skill) gives every clip all its questions;
    - without it, questions.json (MMOU items, as recipes.synthetic writes them) gives each clip its first;
    - other media files in the folder come with the first example question.
    """
    from .evaluate import DataError, load_items, question_prompt, resolve_video
    demo_dir = Path(demo_dir)
    if not demo_dir.is_dir():
        return []
    rows: list[tuple[Path, str, str]] = []
    suggested, qfile = demo_dir / "suggested.json", demo_dir / "questions.json"
    if suggested.is_file():
        for clip in _read_json_list(suggested):
            path = demo_dir / str(clip.get("video", "")) if isinstance(clip, dict) else None
            if path is None or not path.is_file():
                continue
            secs = clip.get("duration")
            name = f"{path.name} ({secs:.0f} s)" if isinstance(secs, (int, float)) else path.name
            for q in clip.get("free_form") or []:
                if isinstance(q, str):
                    rows.append((path, q, f"{name}: what happens"))
            for q in clip.get("questions") or []:
                if isinstance(q, dict) and isinstance(q.get("prompt") or q.get("question"), str):
                    rows.append((path, q.get("prompt") or q["question"], f"{name}: {q.get('skill', 'question')}"))
    if not rows and qfile.is_file():
        try:
            seen = set()
            for item in load_items(qfile):
                try:
                    clip = resolve_video(item, qfile)
                except DataError:
                    continue
                if clip.resolve() not in seen:
                    seen.add(clip.resolve())
                    rows.append((clip, question_prompt(item), clip.name))
        except DataError:
            pass
    listed = {p.resolve() for p, _, _ in rows}
    for p in sorted(demo_dir.rglob("*")):
        if p.is_file() and p.suffix.lower() in MEDIA_EXT and p.resolve() not in listed:
            rows.append((p, EXAMPLE_QUESTIONS[0], p.name))
    return [(str(p.resolve()), q, label) for p, q, label in rows[:MAX_DEMO_ROWS]]


def _read_json_list(path: Path) -> list:
    import json
    try:
        data = json.loads(path.read_bytes()) if path.stat().st_size <= 1 << 20 else None
    except (OSError, ValueError):
        return []
    return data if isinstance(data, list) else []


MEDIA_PANEL = """
<div class="omni-media-panel">
  <div class="omni-player"><div class="omni-empty">Upload a clip, pick a demo, or start the microphone.</div></div>
  <div class="omni-visual" aria-label="the media over time, with the reasoning's time spans">
    <canvas class="omni-thumbs"></canvas><canvas class="omni-wave"></canvas>
    <div class="omni-spans"></div><div class="omni-playhead"></div>
  </div>
  <div class="omni-progress" hidden><div class="omni-progress-bar"></div></div>
  <div class="omni-intake" role="status"></div>
  <div class="omni-error" role="alert" hidden></div>
  <ol class="omni-narration" aria-label="what the model perceived, chunk by chunk, as it read the stream" hidden></ol>
</div>
"""

ANSWER_PANEL = """
<div class="omni-answers" aria-live="polite"><div class="omni-empty">Answers appear here as they are written.</div></div>
"""


def build_ui(model_note: str = "", demo_dir: Path = DEMO_DIR, api_key_box: bool = False):
    """The Blocks app (not mounted)."""
    import gradio as gr

    head = ('<link rel="stylesheet" href="/static/ui/ui.css">'
            '<script src="/static/omnistream.js"></script><script src="/static/ui/ui.js"></script>')
    with gr.Blocks(title="omnistream", analytics_enabled=False, fill_width=True) as demo:
        question = gr.Textbox(label="Question", placeholder="Ask about what was uploaded or streamed so far",
                              lines=2, max_lines=6, elem_id="omni-question", render=False)
        gr.HTML(f"""<header class="omni-header"><h1>omnistream</h1>
<p class="omni-model">Model: <span id="omni-model">connecting...</span></p>
{f'<p class="omni-note" id="omni-note">{html.escape(model_note)}</p>' if model_note else ''}</header>""",
                js_on_load=None, elem_id="omni-header-block")
        with gr.Row(equal_height=False, elem_id="omni-main"):
            with gr.Column(scale=3, min_width=300):
                gr.HTML(MEDIA_PANEL, head=head, js_on_load="window.omniUI.attachMedia(element);",
                        elem_id="omni-media")
                upload = gr.File(label="Upload video, audio or images",
                                 file_count="multiple", file_types=list(MEDIA_EXT), elem_id="omni-upload")
                with gr.Row():
                    mic = gr.Button("Microphone", elem_id="omni-mic", size="sm")
                    cam = gr.Button("Camera", elem_id="omni-cam", size="sm")
                    stop = gr.Button("Stop streaming", elem_id="omni-stop", size="sm")
                voice_turns = gr.Checkbox(False, label="Answer each time I stop speaking (server VAD)",
                                          elem_id="omni-vad")
                demos = demo_examples(demo_dir)
                if demos:
                    per_clip = max(sum(1 for d in demos if d[0] == demos[0][0]), 4)
                    gr.Examples([[p, q] for p, q, _ in demos], inputs=[upload, question],
                                label="Demo clips (a click loads the clip and a question)", elem_id="omni-demos",
                                example_labels=[label for _, _, label in demos], examples_per_page=per_clip)
            with gr.Column(scale=2, min_width=300):
                key = gr.Textbox(label="API key (this server wants one)", type="password", elem_id="omni-key",
                                 visible=api_key_box)
                question.render()
                with gr.Row():
                    reasoning = gr.Checkbox(True, label="Reasoning", elem_id="omni-reasoning", min_width=100)
                    guided = gr.Checkbox(True, label="Answer with one of the question's options", elem_id="omni-guided",
                                         min_width=140)
                    budget = gr.Slider(0, 4096, value=0, step=64, label="Reasoning budget (tokens, 0: no limit)",
                                       elem_id="omni-budget", min_width=180)
                with gr.Row():
                    ask = gr.Button("Ask", variant="primary", elem_id="omni-ask")
                    cancel = gr.Button("Stop answer", elem_id="omni-cancel")
                gr.HTML(ANSWER_PANEL, head=head, js_on_load="window.omniUI.attachAnswers(element);",
                        elem_id="omni-answer")
                with gr.Accordion("Sampling", open=False, elem_id="omni-sampling"):
                    max_tokens = gr.Slider(16, 4096, value=512, step=16, label="Max output tokens",
                                           elem_id="omni-max-tokens")
                    temperature = gr.Slider(0, 2, value=0, step=0.05, label="Temperature (0: greedy)",
                                            elem_id="omni-temperature")
                    top_p = gr.Slider(0.05, 1, value=1, step=0.05, label="Top-p", elem_id="omni-top-p")
                gr.Examples([[q] for q in EXAMPLE_QUESTIONS], inputs=[question], label="Example questions",
                            elem_id="omni-example-questions")

        upload.change(None, [upload], None, js="(files) => { window.omniUI.useFiles(files); }")
        mic.click(None, [voice_turns], None, js="(vad) => { window.omniUI.startMicrophone(vad); }")
        cam.click(None, None, None, js="() => { window.omniUI.startCamera(); }")
        stop.click(None, None, None, js="() => { window.omniUI.stopLive(); }")
        voice_turns.change(None, [voice_turns], None, js="(vad) => { window.omniUI.setVoiceTurns(vad); }")
        asked = ("(q, r, b, m, t, p, g) => { window.omniUI.ask(q, {reasoning: r, budget: b, maxTokens: m, "
                 "temperature: t, topP: p, guided: g}); }")
        ask_inputs = [question, reasoning, budget, max_tokens, temperature, top_p, guided]
        ask.click(None, ask_inputs, None, js=asked)
        question.submit(None, ask_inputs, None, js=asked)
        cancel.click(None, None, None, js="() => { window.omniUI.cancel(); }")
        key.change(None, [key], None, js="(k) => { window.omniUI.setApiKey(k); }")
    return demo


def mount_ui(app, config, path: str = "/", demo_dir: Path | None = None):
    """Mount the UI on `app` (after every API route: a mount at `/` takes what no route before it
    matched). `config` is the server's ServerConfig; the demo clips come from `demo_dir`
    ($OMNISTREAM_DEMO_DIR, else assets/demo/)."""
    import gradio as gr
    demo_dir = Path(demo_dir or os.environ.get("OMNISTREAM_DEMO_DIR") or DEMO_DIR)
    demo = build_ui(default_model_note(config.model_dir), demo_dir, api_key_box=bool(config.api_key))
    theme = gr.themes.Default(primary_hue="blue",
                              font=["system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"],
                              font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "monospace"])
    allowed = [str(demo_dir.resolve())] if demo_dir.is_dir() else []
    _serve_gradio_static(app)
    app = gr.mount_gradio_app(app, demo, path=path, footer_links=[], run_history=False, theme=theme,
                              allowed_paths=allowed, ssr_mode=False, mcp_server=False, pwa=False)
    # Gradio's queue workers wake every millisecond (progress every 10 ms) even when idle, on the
    # event loop the API shares. No event of this page goes through the queue (they run in the
    # browser; examples load with queue=False): let them poll at 20 Hz.
    demo._queue.sleep_when_free = 0.05
    demo._queue.progress_update_sleep_when_free = 0.1
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a):
        async with inner(a) as state:
            yield state
        demo._queue.close()                   # its workers end at their next wake-up, before the loop closes
        await asyncio.sleep(0.12)

    app.router.lifespan_context = lifespan
    return app


def _serve_gradio_static(app) -> None:
    """Gradio's page loads files from its own /static/ (js/, img/, ...), which the API's /static
    mount, matched first, would answer with 404: serve those folders ahead of it."""
    import gradio as gr
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles
    ours = Path(__file__).resolve().parent / "static"
    theirs = Path(gr.__file__).resolve().parent / "templates" / "frontend" / "static"
    routes = app.router.routes
    at = next((i for i, r in enumerate(routes) if getattr(r, "path", None) == "/static"), 0)
    for sub in sorted(p.name for p in theirs.iterdir() if p.is_dir()):
        if not (ours / sub).exists():
            routes.insert(at, Mount(f"/static/{sub}", StaticFiles(directory=theirs / sub)))
