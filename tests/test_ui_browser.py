"""The UI in a real browser: Playwright drives Debian's chromium against a server these tests start.

The server is the real app (create_app: the API and the Gradio UI on one port) serving a scripted
Omni checkpoint (tests/ui_fixtures.py): real towers encode every frame and every microphone clip,
and the answer is known in advance, `[2–5 sec] A tone plays</think>Heard 6-9 s`, so the tests
can check what the page shows against it: the streamed text, the time spans the server annotated
drawn as chips and on the media strip, where a click seeks the player. The demo clip is made by
recipes.synthetic (20 s, H.264 + AAC); chromium's fake microphone and camera stand in for a
person's. Every test fails if the page asked for anything but this server, got an HTTP error,
or threw.

Screenshots of each step are saved to .cache/screenshots/ui/ (gitignored) for review.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from ui_fixtures import (EVIDENCE_SPAN_MS, REASONING_SPAN_MS, build_scripted_omni_checkpoint,
                         chromium_available, launch_chromium, make_demo_folder, write_corrupt_video)

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / ".cache" / "screenshots" / "ui"
CLIP_S = 20
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not chromium_available():
        message = "Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from app.server import ServerConfig, create_app
    from service_fixtures import RunningServer
    model = tmp_path_factory.mktemp("scripted-omni")
    build_scripted_omni_checkpoint(model)
    demo = make_demo_folder(tmp_path_factory.mktemp("demo"), seconds=CLIP_S)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMNISTREAM_DEMO_DIR", str(demo))                    # the UI's demo clips
        app = create_app(ServerConfig(model_dir=model, model_name="scripted-omni", vad="energy"))
    srv = RunningServer(app)
    srv.demo_clip, srv.demo_dir, srv.model_dir = next((demo / "clips").glob("*.mp4")), demo, model
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = launch_chromium(p)
        yield b
        b.close()


class Page:
    """A page of the UI with what it sent and received recorded."""

    def __init__(self, browser, server, width=1280, height=1000):
        self.ctx = browser.new_context(viewport={"width": width, "height": height},
                                       permissions=["microphone", "camera"])
        self.page = self.ctx.new_page()
        self.server = server
        self.requests, self.bad, self.errors, self.sent, self.sent_events, self.got = [], [], [], [], [], []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("response", lambda r: self.bad.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("websocket", self._socket)

    def _socket(self, ws):
        ws.on("framesent", lambda m: self._sent(json.loads(m)) if isinstance(m, str) else None)
        ws.on("framereceived", lambda m: self.got.append(json.loads(m)) if isinstance(m, str) else None)

    def _sent(self, event: dict):
        self.sent.append(event.get("type"))
        self.sent_events.append(event)

    def open(self, model: str = "scripted-omni"):
        """Load the UI and wait until its model line names `model`."""
        self.page.goto(f"http://127.0.0.1:{self.server.port}/")
        self.page.wait_for_function(f"document.getElementById('omni-model')?.textContent.startsWith({json.dumps(model)})",
                                    timeout=30000)

    def shot(self, name):
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

    def ask(self, question=None, reasoning=True, guided=True):
        p = self.page
        if question is not None:
            p.locator("#omni-question textarea").fill(question)
        for box, on in (("#omni-reasoning", reasoning), ("#omni-guided", guided)):
            box = p.locator(f"{box} input[type=checkbox]")
            if box.is_checked() != on:
                box.click()
        n = p.locator(".omni-turn").count()
        p.locator("#omni-ask").click()
        p.wait_for_function(f"document.querySelectorAll('.omni-turn').length > {n} && "
                            "['completed', 'incomplete'].includes(document.querySelector('.omni-turn').dataset.status)",
                            timeout=60000)     # incomplete: the answer reached its token limit
        return p.locator(".omni-turn").first

    def check_clean(self):
        """Nothing but this server was asked for, nothing failed, nothing threw."""
        here = (f"http://127.0.0.1:{self.server.port}/", f"ws://127.0.0.1:{self.server.port}/")
        outside = [u for u in self.requests if not u.startswith(here + ("blob:", "data:"))]
        assert outside == [], f"the page asked for other hosts: {outside[:5]}"
        assert self.bad == [], f"HTTP errors: {self.bad[:5]}"
        assert self.errors == [], f"page errors: {self.errors[:5]}"


@pytest.fixture
def ui(browser, server):
    page = Page(browser, server)
    yield page
    page.ctx.close()


def text_tokens(server, question: str, reasoning: bool = True) -> int:
    """Tokens of a session with no media: the stream header and the question's tail."""
    from fusion.prompt import question_tail, stream_header
    from engine.tokenizer import Tokenizer
    tok = Tokenizer.from_dir(server.model_dir)
    return len(tok.encode(stream_header(""))) + len(tok.encode(question_tail(question, reasoning)))


def chips(turn):
    return [(c.inner_text(), int(c.get_attribute("data-start-ms")), int(c.get_attribute("data-end-ms")),
             "omni-evidence" in c.get_attribute("class")) for c in turn.locator(".omni-chip").all()]


def test_demo_clip_answer_streams_with_timestamps_and_a_click_seeks_the_player(ui):
    p = ui.page
    ui.open()
    ui.shot("01-page")
    p.locator("#omni-demos button", has_text=ui.server.demo_clip.name).click()      # one click: clip and question
    p.wait_for_function("document.querySelector('.omni-intake')?.dataset.ready === '1'", timeout=60000)
    assert "Reason step by step with timestamps" in p.locator("#omni-question textarea").input_value()
    assert f"Taken in: {CLIP_S:.1f} s of media" in p.locator(".omni-intake").inner_text()
    assert "conversation.item.create" in ui.sent
    progress = [e for e in ui.got if e["type"] == "media.progress"]          # drawn as the progress bar
    assert progress and progress[-1]["done_ms"] == progress[-1]["total_ms"] == CLIP_S * 1000
    p.wait_for_function("document.querySelector('.omni-player video').readyState >= 1")
    assert p.evaluate("document.querySelector('.omni-player video').duration") == pytest.approx(CLIP_S, abs=0.1)
    ui.shot("02-demo-clip-loaded")

    # the DOM states of the answer while it streams
    p.evaluate("""() => { window.__states = new Set(); const a = document.querySelector('.omni-answers');
        new MutationObserver(() => { const t = a.querySelector('.omni-turn'); if (t) __states.add(t.innerText); })
            .observe(a, {subtree: true, childList: true, characterData: true}); }""")
    turn = ui.ask(guided=False)
    assert "choices" not in ui.sent_events[-1]["response"]["omni"]
    assert int(turn.get_attribute("data-deltas")) >= 10                    # token by token over the socket
    assert p.evaluate("__states.size") >= 10                              # and drawn as it came
    steps = turn.locator(".omni-step")
    assert steps.count() == 1 and steps.first.inner_text().endswith("A tone plays")
    assert turn.locator(".omni-answer-text").inner_text() == "Heard 0:06.0\u20130:09.0"
    assert chips(turn) == [("0:02.0\u20130:05.0", *REASONING_SPAN_MS, False),
                           ("0:06.0\u20130:09.0", *EVIDENCE_SPAN_MS, True)]
    spans = p.locator(".omni-visual .omni-span")                            # drawn on the media strip
    assert spans.count() == 2
    left = [float(s.evaluate("e => e.style.left").rstrip("%")) for s in spans.all()]
    assert left == pytest.approx([100 * REASONING_SPAN_MS[0] / 1000 / CLIP_S, 100 * EVIDENCE_SPAN_MS[0] / 1000 / CLIP_S])
    assert "omni-evidence-span" in spans.nth(1).get_attribute("class")
    ui.shot("03-answer-with-timeline")

    # a click on a chip seeks the player, in the browser: no request, no socket message
    requests, sent = len(ui.requests), len(ui.sent)
    turn.locator(".omni-chip.omni-evidence").click()
    p.wait_for_function(f"Math.abs(document.querySelector('.omni-player video').currentTime - "
                        f"{EVIDENCE_SPAN_MS[0] / 1000}) < 0.01", timeout=5000)
    p.wait_for_selector(".omni-chip.omni-evidence.omni-now", timeout=5000)   # the span playing is lit
    assert turn.locator(".omni-step .omni-chip.omni-now").count() == 0
    turn.locator(".omni-step .omni-chip").click()
    p.wait_for_function(f"Math.abs(document.querySelector('.omni-player video').currentTime - "
                        f"{REASONING_SPAN_MS[0] / 1000}) < 0.01", timeout=5000)
    p.wait_for_selector(".omni-step .omni-chip.omni-now", timeout=5000)
    assert len(ui.requests) == requests and len(ui.sent) == sent
    head = float(p.evaluate("document.querySelector('.omni-playhead').style.left").rstrip("%"))
    assert head == pytest.approx(100 * REASONING_SPAN_MS[0] / 1000 / CLIP_S, abs=0.5)
    p.wait_for_function("(v => !v.seeking && v.readyState >= 2)(document.querySelector('.omni-player video'))")
    ui.shot("04-seeked-to-the-reasoning-step")
    # guided choice (on by default): the question's options go with the request, the answer is one of them
    options = [line.split(") ", 1)[1] for line in p.locator("#omni-question textarea").input_value().splitlines()
               if line[:1] == "(" and line[2:4] == ") "]
    assert len(options) >= 2
    turn = ui.ask()
    assert ui.sent_events[-1]["response"]["omni"]["choices"] == options
    done = [e for e in ui.got if e["type"] == "response.done"][-1]["response"]
    assert done["output"][0]["content"][0]["text"].rpartition("</think>")[2].strip() in options
    assert turn.locator(".omni-answer-text .omni-chip").count() == 1       # drawn as the others: a span chip
    ui.check_clean()


def test_a_narrating_models_captions_are_listed_and_seek_the_player(ui):
    """With a narrating model, each chunk's caption is listed under the player as it is read; its
    time chip seeks the player in the browser."""
    from fusion.stream import Narration
    engine = ui.server.state.engine
    engine.narration = Narration({"audio": "(heard: ", "video": "(seen: "}, ")", 3)
    try:
        p = ui.page
        ui.open()
        p.locator("#omni-demos button", has_text=ui.server.demo_clip.name).click()
        p.wait_for_function("document.querySelector('.omni-intake')?.dataset.ready === '1'", timeout=60000)
        count = -1
        while count != sum(e["type"] == "media.narration" for e in ui.got):   # until the engine caught up
            count = sum(e["type"] == "media.narration" for e in ui.got)
            p.wait_for_timeout(500)
        narration = [e for e in ui.got if e["type"] == "media.narration"]
        assert {e["modality"] for e in narration} == {"video", "audio"} and narration[-1]["end_ms"] >= (CLIP_S - 2) * 1000
        lines = p.locator(".omni-narration li")
        p.wait_for_function(f"document.querySelectorAll('.omni-narration li').length === {min(8, len(narration))}")
        last = narration[-1]
        assert lines.last.inner_text().endswith(last["text"].strip("()"))
        p.wait_for_function("document.querySelector('.omni-player video').readyState >= 1")
        chip = lines.nth(0).locator(".omni-chip")
        start_ms = int(chip.get_attribute("data-start-ms"))
        assert start_ms == narration[-min(8, len(narration))]["start_ms"]
        chip.click()
        p.wait_for_function(f"Math.abs(document.querySelector('.omni-player video').currentTime - {start_ms / 1000}) < 0.01",
                            timeout=5000)
        ui.shot("05-narration")
        ui.check_clean()
    finally:
        engine.narration = None


def test_microphone_and_camera_stream_and_questions_are_answered_mid_stream(ui):
    p = ui.page
    ui.open()
    p.locator("#omni-mic").click()
    p.locator("#omni-cam").click()
    streamed = "Number(document.querySelector('.omni-intake').dataset.streamedMs || 0)"
    p.wait_for_function(f"{streamed} > 2500", timeout=30000)
    assert p.locator(".omni-intake").inner_text().startswith("Streaming:")
    assert " camera frame" in p.locator(".omni-intake").inner_text()
    assert p.evaluate("document.querySelector('.omni-camera').videoWidth") > 0           # the camera preview
    ui.shot("05-microphone-streaming")

    turn = ui.ask("What did I just say?")
    at_answer = p.evaluate(streamed)
    asked = ui.sent.index("response.create")
    assert "input_audio_buffer.append" in ui.sent[:asked] and "input_image_buffer.append" in ui.sent[:asked]
    assert "input_audio_buffer.commit" in ui.sent[:asked]                 # the audio so far is a turn
    assert chips(turn)[0][1:3] == REASONING_SPAN_MS
    read = int(turn.locator(".omni-meta").inner_text().split(" tokens read")[0].split()[-1])
    heard_s = at_answer / 1000 - 0.5                                   # what had surely reached the server
    assert read - text_tokens(ui.server, "What did I just say?") >= 12.5 * heard_s * 0.8   # audio: 12.5 tokens/s
    p.wait_for_function(f"{streamed} > {at_answer + 500}", timeout=10000)   # the stream goes on
    assert ui.sent[asked + 1:].count("input_audio_buffer.append") > 0
    assert f"the model has read {read} tokens" in p.locator(".omni-intake").inner_text()
    turn.locator(".omni-step .omni-chip").click()                      # seeks the recording of the stream
    p.wait_for_function(f"Math.abs(document.querySelector('.omni-recording').currentTime - "
                        f"{REASONING_SPAN_MS[0] / 1000}) < 0.01", timeout=5000)
    ui.shot("06-microphone-answer-mid-stream")

    turn = ui.ask("And now, briefly?", reasoning=False)                 # reasoning off: the answer alone
    assert turn.locator(".omni-reasoning").count() == 0
    assert turn.locator(".omni-answer-text").inner_text() == "Heard 0:06.0\u20130:09.0"
    assert p.locator(".omni-turn").count() == 2
    later = int(turn.locator(".omni-meta").inner_text().split(" tokens read")[0].split()[-1])
    assert later > read                                                # more audio was taken in between

    p.locator("#omni-stop").click()
    p.wait_for_function("document.querySelector('.omni-intake').innerText.startsWith('Streamed:')", timeout=5000)
    n = ui.sent.count("input_audio_buffer.append")
    time.sleep(0.6)
    assert ui.sent.count("input_audio_buffer.append") == n              # stopped
    ui.shot("07-microphone-stopped")
    ui.check_clean()


def test_a_ta_cot_trace_draws_one_row_per_step_with_its_span(ui):
    """The generator's TA-CoT target (several steps, `<t>` tags) as the server would stream it: its
    text in pieces and each span app/timestamps.py reads in it, fed to the page's socket handler."""
    from app.timestamps import find_time_spans
    items = json.loads((ui.server.demo_dir / "questions.json").read_text())
    item = max(items, key=lambda it: it["reasoning"].count("<t>"))
    text = item["reasoning"].removeprefix("<think>\n")                  # the prompt ends in <think>\n
    spans = find_time_spans(text, item["video_duration"])
    steps = [line for line in text.split("</think>")[0].splitlines() if line.strip()]
    assert len(steps) >= 3 and len(spans) >= len(steps)
    rid, base = "resp_trace", {"response_id": "resp_trace", "item_id": "item_trace", "output_index": 0, "content_index": 0}
    events = [{"type": "response.created", "response": {"id": rid, "status": "in_progress"}}]
    for i in range(0, len(text), 7):
        events.append({"type": "response.output_text.delta", **base, "delta": text[i:i + 7]})
        for s in spans:                                                 # each span once its text has arrived
            if i < s.end_index <= i + 7:
                events.append({"type": "response.output_text.annotation.added", **base, "annotation": {
                    "type": "media_timestamp", "start_ms": round(s.start_s * 1000), "end_ms": round(s.end_s * 1000),
                    "source": "video", "start_index": s.start_index, "end_index": s.end_index}})
    events.append({"type": "response.done", "response": {"id": rid, "status": "completed", "usage": {"output_tokens": 40}}})
    p = ui.page
    ui.open()
    p.locator("#omni-demos button", has_text=ui.server.demo_clip.name).click()
    p.wait_for_function("document.querySelector('.omni-intake')?.dataset.ready === '1'", timeout=60000)
    p.evaluate("evs => evs.forEach(e => omniUI.os.ws.onmessage({data: JSON.stringify(e)}))", events)
    turn = p.locator(".omni-turn").first
    rows = turn.locator(".omni-step")
    assert rows.count() == len(steps)
    for row, step, span in zip(rows.all(), steps, spans):
        assert row.inner_text().endswith(step.split("</t>", 1)[1].strip())
        assert int(row.locator(".omni-chip").get_attribute("data-start-ms")) == round(span.start_s * 1000)
    assert turn.locator(".omni-answer-text").inner_text() == text.split("</think>")[1].strip("\n")
    assert p.locator(".omni-visual .omni-span").count() == len(spans)
    rows.nth(1).locator(".omni-chip").click()
    p.wait_for_function(f"Math.abs(document.querySelector('.omni-player video').currentTime - {spans[1].start_s}) < 0.01",
                        timeout=5000)
    p.wait_for_function("(v => !v.seeking && v.readyState >= 2)(document.querySelector('.omni-player video'))")
    ui.shot("12-ta-cot-trace")
    ui.check_clean()


def test_a_corrupt_upload_shows_the_service_error_in_words(ui, tmp_path):
    p = ui.page
    ui.open()
    p.locator("#omni-upload input[type=file]").set_input_files(str(write_corrupt_video(tmp_path / "holiday.mp4")))
    p.wait_for_selector(".omni-error:not([hidden])", timeout=30000)
    text = p.locator(".omni-error").inner_text()
    assert text.startswith("This video could not be read.")
    assert "holiday.mp4: not a media file" in text and "(invalid_video)" in text   # the service's words, our file name
    assert p.locator(".omni-intake").inner_text() == "Nothing was taken in from this upload."
    assert p.locator(".omni-player video").count() == 0
    ui.shot("08-corrupt-upload-error")
    ui.check_clean()


def test_phone_width(browser, server):
    ui = Page(browser, server, width=390, height=844)
    try:
        p = ui.page
        ui.open()
        p.locator("#omni-demos button", has_text=server.demo_clip.name).click()
        p.wait_for_function("document.querySelector('.omni-intake')?.dataset.ready === '1'", timeout=60000)
        turn = ui.ask("What is heard?")
        assert len(chips(turn)) == 2
        assert p.evaluate("document.documentElement.scrollWidth") <= 390          # nothing wider than the phone
        for sel in ("#omni-ask", "#omni-question textarea", ".omni-player video", ".omni-visual", ".omni-turn"):
            box = p.locator(sel).bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390, (sel, box)
        turn.locator(".omni-chip.omni-evidence").click()
        p.wait_for_function(f"Math.abs(document.querySelector('.omni-player video').currentTime - "
                            f"{EVIDENCE_SPAN_MS[0] / 1000}) < 0.01", timeout=5000)
        p.wait_for_function("(v => !v.seeking && v.readyState >= 2)(document.querySelector('.omni-player video'))")
        ui.shot("09-phone-width")
        ui.check_clean()
    finally:
        ui.ctx.close()


@contextmanager
def served_page(browser, config):
    """A Page of a server of its own (create_app(config)), opened on its model; both closed after."""
    from app.server import create_app
    from service_fixtures import RunningServer
    srv = RunningServer(create_app(config))
    ui = Page(browser, srv)
    try:
        ui.open(config.model_name or Path(config.model_dir).name)
        yield ui
    finally:
        ui.ctx.close()
        srv.stop()


def test_the_default_model_says_what_it_is(browser):
    """The bundled default model: the note under the model line (its card's first paragraph, how to
    load a real checkpoint), what it takes in, a question answered as it streams."""
    from app.server import ServerConfig
    from app.ui import DEFAULT_MODEL
    with served_page(browser, ServerConfig(model_dir=DEFAULT_MODEL)) as ui:
        p = ui.page
        note = p.locator("#omni-note").inner_text()
        assert "trained from scratch on synthetic clips" in note and "python -m app --model DIR" in note
        assert "sees images and video, hears audio" in p.locator("#omni-model").inner_text()
        turn = ui.ask("Why is the sky blue?")
        assert int(turn.get_attribute("data-deltas")) >= 2
        ui.shot("10-default-model")
        ui.check_clean()


def test_a_text_only_model_refuses_media_it_cannot_take(browser, server, tmp_path):
    """A model without towers says so on its model line and refuses a video in words before
    anything is sent; the answer before stays."""
    from app.server import ServerConfig
    from builders import build_text_checkpoint
    from tokenizer_fixture import build_test_tokenizer
    model = tmp_path / "text-model"
    build_text_checkpoint(model, "M*E")
    build_test_tokenizer(model)
    with served_page(browser, ServerConfig(model_dir=model)) as ui:
        p = ui.page
        assert "(text only)" in p.locator("#omni-model").inner_text()
        ui.ask("Why is the sky blue?")
        sent = len(ui.sent)
        p.locator("#omni-upload input[type=file]").set_input_files(str(server.demo_clip))
        p.wait_for_selector(".omni-error:not([hidden])", timeout=30000)
        assert p.locator(".omni-error strong").inner_text() == ("The loaded model (text-model) does not see: "
                                                                "it takes no video or images.")
        assert len(ui.sent) == sent                                   # nothing was sent
        assert p.locator(".omni-turn").count() == 1                   # and the answer stays
        ui.check_clean()


def test_a_server_with_an_api_key_asks_for_it(browser):
    from app.server import ServerConfig
    from app.ui import DEFAULT_MODEL
    with served_page(browser, ServerConfig(model_dir=DEFAULT_MODEL, api_key="sesame")) as ui:
        p = ui.page
        p.locator("#omni-question textarea").fill("Hello?")
        p.locator("#omni-ask").click()
        p.wait_for_selector(".omni-error:not([hidden])", timeout=30000)
        assert p.locator(".omni-error strong").inner_text() == "The server needs an API key: enter it in the API key box."
        ui.shot("11-api-key-wanted")
        p.locator("#omni-key input").fill("sesame")
        p.locator("#omni-key input").press("Enter")
        p.locator("#omni-key input").blur()
        turn = ui.ask()      # the bundled model may talk until its token limit on a question about no media
        assert turn.get_attribute("data-status") in ("completed", "incomplete")
        assert int(turn.get_attribute("data-deltas")) >= 2
        assert p.locator(".omni-error").is_hidden()
        ui.check_clean()


def test_default_model_note_only_for_the_bundled_model(tmp_path):
    from app.ui import DEFAULT_MODEL, default_model_note
    note = default_model_note(DEFAULT_MODEL)
    trained = "vision_config" in json.loads((DEFAULT_MODEL / "config.json").read_text())
    assert ("trained from scratch on synthetic clips" if trained else "placeholder with random weights") in note
    assert "python -m app --model DIR" in note and len(note) < 600
    assert default_model_note(tmp_path) == "" and default_model_note(None) == ""
    card = tmp_path / "bundled"                                         # a model card's first paragraph wins
    card.mkdir()
    (card / "README.md").write_text("---\nlicense: other\n---\n# Tiny\n\nTrained on 1,500 synthetic clips\nfor 20 "
                                    "minutes.\n\nMore.\n")
    assert default_model_note(card, default=card).startswith("Trained on 1,500 synthetic clips for 20 minutes. Load")


def test_demo_examples_read_suggested_json_questions_json_and_bare_clips(tmp_path):
    from app.evaluate import PROMPT_SUFFIX
    from app.ui import EXAMPLE_QUESTIONS, demo_examples
    demo = make_demo_folder(tmp_path / "demo", seconds=10, seed=3)
    (demo / "extra").mkdir()
    bare = demo / "extra" / "talk.wav"
    bare.write_bytes(b"RIFF")                                           # listed by name; read only when clicked
    clip = next((demo / "clips").glob("*.mp4"))
    questions = json.loads((demo / "questions.json").read_text())
    rows = demo_examples(demo)                                          # questions.json: each clip's first question
    assert rows[0][0] == str(clip.resolve()) and rows[0][2] == clip.name
    assert rows[0][1].startswith("(A) ") and rows[0][1].endswith(PROMPT_SUFFIX + "\n" + questions[0]["question"])
    assert rows[1] == (str(bare.resolve()), EXAMPLE_QUESTIONS[0], "talk.wav")
    assert len(rows) == 2 and demo_examples(tmp_path / "missing") == []

    # suggested.json (recipes.train's demo folder): every question of every clip, free-form first
    (demo / "suggested.json").write_text(json.dumps([{
        "video": f"clips/{clip.name}", "duration": 10.2, "free_form": ["What happens? List it with time spans."],
        "questions": [{"question_id": "q0", "skill": "counting", "question": "How many?", "prompt": "How many?\n(A) 1"},
                      {"question_id": "q1", "skill": "needle", "question": "Which word?"}]},
        {"video": "clips/missing.mp4", "duration": 5, "free_form": ["?"], "questions": []}]))
    rows = demo_examples(demo)
    assert rows == [(str(clip.resolve()), "What happens? List it with time spans.", f"{clip.name} (10 s): what happens"),
                    (str(clip.resolve()), "How many?\n(A) 1", f"{clip.name} (10 s): counting"),
                    (str(clip.resolve()), "Which word?", f"{clip.name} (10 s): needle"),
                    (str(bare.resolve()), EXAMPLE_QUESTIONS[0], "talk.wav")]
    (demo / "suggested.json").write_text("{not json")                  # unreadable: questions.json again
    assert [r[2] for r in demo_examples(demo)] == [clip.name, "talk.wav"]
