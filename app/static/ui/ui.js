// ui.js: the browser half of omnistream's UI (app/ui.py), a client of WS /v1/realtime through
// omnistream.js like any other.
//
// One realtime session per source: an upload (a video, an audio file or images, sent as one
// conversation item) or a live stream (microphone and/or camera). Questions go to the current
// session at any moment; each answer is a "turn" drawn as it streams: the reasoning as a timeline
// of steps with their time spans as chips, then the answer with its evidence spans. A chip, a
// step or a point of the media strip seeks the player here, in the browser. The media strip
// shows the waveform and video thumbnails with the active turn's spans drawn on it.
(function () {
  "use strict";

  const VIDEO_EXT = ["mp4", "webm", "mov", "mkv", "m4v", "avi"];
  const AUDIO_EXT = ["wav", "mp3", "flac", "ogg", "oga", "opus", "m4a", "aac"];
  const IMAGE_EXT = ["jpg", "jpeg", "png"];
  const LIVE_RATE = 24000;          // omnistream.js sends the microphone as PCM16 at 24 kHz
  const RECORD_MAX_S = 3600;        // the playback recording of a live stream keeps its first hour
  const THINK_END = "</think>";

  // What a person should read for each error code of the service (the server's own message follows).
  const FRIENDLY = {
    invalid_video: "This video could not be read. Is it a complete mp4, webm, mov or mkv file?",
    invalid_audio: "This audio could not be read. Try a wav, mp3, flac, ogg or m4a file.",
    invalid_image: "This image could not be read. Images must be JPEG or PNG.",
    payload_too_large: "This file is too large for the server.",
    encoder_unavailable: "No media encoder is connected to the server right now, so media cannot be taken in.",
    encoder_error: "The server could not encode this media.",
    session_limit: "The server is busy (it holds its maximum of sessions). Try again in a moment.",
    rate_limited: "Too much was sent too fast; some of it was dropped.",
    input_audio_buffer_overflow: "The server is falling behind the microphone; some audio was refused.",
    unauthorized: "The server needs an API key: enter it in the API key box.",
    conversation_already_has_active_response: "An answer is still being written: wait for it or press Stop answer.",
    session_not_found: "The session expired; upload or stream again.",
    invalid_value: "The server refused a setting.",
  };

  const MEDIA_ERRORS = ["invalid_video", "invalid_audio", "invalid_image", "payload_too_large"];

  const $ = (root, sel) => root.querySelector(sel);

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  const NARRATION_LINES = 8;

  function fmtTime(ms) {
    const s = Math.max(0, ms) / 1000;
    const m = Math.floor(s / 60);
    const rest = s - 60 * m;
    return m + ":" + (rest < 10 ? "0" : "") + rest.toFixed(1);
  }

  function fmtSpan(a) {
    return a.end_ms > a.start_ms ? fmtTime(a.start_ms) + "\u2013" + fmtTime(a.end_ms) : fmtTime(a.start_ms);
  }

  // The options of a multiple-choice question, one a line as `(A) text` (app.evaluate.question_prompt
  // writes them so): their texts, or null when there are fewer than two or they repeat.
  function optionTexts(question) {
    const texts = [];
    for (const line of question.split("\n")) {
      const m = /^\(([A-Z])\)\s+(\S.*)$/.exec(line.trim());
      if (m) texts.push(m[2].trim());
    }
    return texts.length >= 2 && texts.length <= 26 && new Set(texts).size === texts.length ? texts : null;
  }

  function kindOf(name, mime) {
    const ext = (name.split(".").pop() || "").toLowerCase();
    if (mime && mime.startsWith("audio/") && !IMAGE_EXT.includes(ext)) return "audio";
    if (VIDEO_EXT.includes(ext)) return "video";
    if (AUDIO_EXT.includes(ext)) return "audio";
    if (IMAGE_EXT.includes(ext)) return "image";
    return null;
  }

  function dataUrl(blob) {
    return new Promise((resolve, reject) => {
      const r = new FileReader();
      r.onload = () => resolve(r.result);
      r.onerror = () => reject(r.error);
      r.readAsDataURL(blob);
    });
  }

  function base64Bytes(b64) {
    const bin = atob(b64);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  function wavBlob(chunks, rate) {
    const n = chunks.reduce((a, c) => a + c.length, 0);
    const buf = new ArrayBuffer(44 + 2 * n);
    const v = new DataView(buf);
    const str = (o, s) => { for (let i = 0; i < s.length; i++) v.setUint8(o + i, s.charCodeAt(i)); };
    str(0, "RIFF"); v.setUint32(4, 36 + 2 * n, true); str(8, "WAVE"); str(12, "fmt ");
    v.setUint32(16, 16, true); v.setUint16(20, 1, true); v.setUint16(22, 1, true); v.setUint32(24, rate, true);
    v.setUint32(28, 2 * rate, true); v.setUint16(32, 2, true); v.setUint16(34, 16, true); str(36, "data");
    v.setUint32(40, 2 * n, true);
    let o = 44;
    for (const c of chunks) { new Int16Array(buf, o, c.length).set(c); o += 2 * c.length; }
    return new Blob([buf], {type: "audio/wav"});
  }

  // Min/max per column of a mono signal (Float32 in [-1, 1] or Int16), for the waveform.
  function peaks(samples, columns, scale) {
    const out = new Float32Array(2 * columns);
    const per = samples.length / columns;
    for (let c = 0; c < columns; c++) {
      let lo = 0, hi = 0;
      const a = Math.floor(c * per), b = Math.min(samples.length, Math.floor((c + 1) * per));
      for (let i = a; i < b; i++) { const x = samples[i] * scale; if (x < lo) lo = x; if (x > hi) hi = x; }
      out[2 * c] = lo; out[2 * c + 1] = hi;
    }
    return out;
  }

  class OmniUI {
    constructor() {
      this.media = null;          // the media panel (player, strip, progress, intake, errors)
      this.answers = null;        // the answers panel
      this.os = null;             // the OmniStream of the current session
      this.ready = null;          // its connect() promise
      this.apiKey = null;
      this.voiceTurns = false;
      this.health = null;
      this.source = null;         // {kind: "file" | "live" | "text", ...}
      this.turns = [];
      this.byResponse = {};
      this.pending = null;        // a turn asked, waiting for response.created
      this.active = null;         // the turn whose spans the strip shows
      this.durationMs = 0;        // length of the media strip
      this.wave = null;           // peaks drawn on the strip
      this.thumbs = [];           // [{t_ms, image}] drawn on the strip
      this.live = null;
      this._itemSeq = 0;
      this._raf = 0;
      this._stripMs = 0;
    }

    // ---- panels ------------------------------------------------------------------------------
    attachMedia(root) {
      this.media = root;
      $(root, ".omni-visual").addEventListener("click", (ev) => {
        if (ev.target.closest(".omni-span")) return;                // a span seeks to its own start
        const r = ev.currentTarget.getBoundingClientRect();
        if (this._stripMs > 0) this.seek(((ev.clientX - r.left) / r.width) * this._stripMs);
      });
      root.addEventListener("click", (ev) => this._chipClick(ev));
      window.addEventListener("resize", () => this.drawStrip());
      this.loadHealth();
    }

    attachAnswers(root) {
      this.answers = $(root, ".omni-answers") || root;
      root.addEventListener("click", (ev) => this._chipClick(ev));
    }

    _chipClick(ev) {
      const target = ev.target.closest("[data-start-ms]");
      if (!target) return;
      ev.preventDefault();
      const turn = target.closest(".omni-turn");
      if (turn && this.byResponse[turn.dataset.responseId]) this.setActive(this.byResponse[turn.dataset.responseId]);
      this.seek(Number(target.dataset.startMs));
    }

    async loadHealth() {
      const line = document.getElementById("omni-model");
      try {
        const h = await (await fetch("/health")).json();
        this.health = h;
        const enc = (h.encoders || []).length;
        const can = !h.vision && !h.audio ? "text only"
                  : [h.vision ? "sees images and video" : "no vision", h.audio ? "hears audio" : "no audio"].join(", ") +
                    "; " + enc + " encoder" + (enc === 1 ? "" : "s");
        if (line) line.textContent = h.model + " (" + can + ")";
      } catch (e) {
        if (line) line.textContent = "unknown (the server did not answer /health)";
      }
    }

    status(text) {
      if (this.media) $(this.media, ".omni-intake").textContent = text;
    }

    showError(code, message, friendly) {
      if (!this.media) return;
      const box = $(this.media, ".omni-error");
      box.textContent = "";
      if (!friendly && /has no vision encoder/.test(message || "")) friendly = "This model does not see: it has no vision encoder, so it takes no video or images.";
      if (!friendly && /has no audio encoder/.test(message || "")) friendly = "This model does not hear: it has no audio encoder, so it takes no audio.";
      box.append(el("strong", "", friendly || FRIENDLY[code] || "The server reported a problem."));
      if (message) box.append(el("span", "omni-error-detail", " " + message + (code ? " (" + code + ")" : "")));
      box.hidden = false;
    }

    clearError() {
      if (this.media) $(this.media, ".omni-error").hidden = true;
    }

    progress(fraction) {
      const bar = $(this.media, ".omni-progress");
      bar.hidden = fraction === null;
      if (fraction !== null) $(bar, ".omni-progress-bar").style.width = (100 * Math.min(1, fraction)).toFixed(1) + "%";
    }

    // ---- the session ---------------------------------------------------------------------------
    wsUrl() {
      return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/v1/realtime";
    }

    closeSession() {
      if (this.os) {
        const os = this.os;
        this.os = null;
        this.ready = null;
        os.close();
      }
    }

    session(fresh) {
      if (fresh) this.closeSession();
      if (this.ready) return this.ready;
      const os = new OmniStream(this.wsUrl(), {apiKey: this.apiKey});
      const send = os.send.bind(os);
      os.send = (event) => { this._tap(event); send(event); };      // the strip draws what is sent
      os.on("response.created", (e) => this._created(e.response));
      os.on("delta", (d, e) => this._delta(e.response_id, d));
      os.on("annotation", (a, e) => this._annotation(e.response_id, a));
      os.on("done", (r) => this._done(r));
      os.on("error", (error) => {                         // omnistream.js fires "error" as (error, event)
        this._error(error);
      });
      os.on("media.progress", (e) => this._progress(e));
      os.on("media.narration", (e) => this._narration(e));
      os.on("conversation.item.done", (e) => this._itemDone(e.item));
      os.on("media.dropped", (e) => this.status("The server is behind: " + e.total_dropped + " camera frame(s) dropped so far."));
      os.on("input_audio_buffer.speech_started", () => this.status("Listening..."));
      os.on("session.going_away", (e) => this.status("The server is closing this session in " + Math.round(e.time_left_ms / 1000) + " s."));
      os.on("close", (c) => {
        if (this.os !== os) return;
        this.ready = null;
        this.os = null;
        if (this.live) this.stopLive();
        if (c && c.code === 1009) this.showError("payload_too_large", "the server closed the connection: message too big (1009)");
        else if (c && c.code === 1008) this.showError("unauthorized", c.reason || "policy violation (1008)");
        this.status("The connection to the server closed; the next question starts a new session.");
      });
      this.os = os;
      this.ready = os.connect().then(() => {
        os.update({type: "realtime", output_modalities: ["text"],
                   audio: {input: {format: {type: "audio/pcm", rate: LIVE_RATE}, turn_detection: this._turnDetection()}}});
        return os;
      }).catch((e) => {
        if (this.os === os) { this.os = null; this.ready = null; }
        this.showError(/API key/.test(e.message) ? "unauthorized" : null, e.message,
                       /cannot connect/.test(e.message) ? "The server cannot be reached." : undefined);
        throw e;
      });
      return this.ready;
    }

    _turnDetection() {
      return this.voiceTurns ? {type: "server_vad", create_response: true} : null;
    }

    setVoiceTurns(on) {
      this.voiceTurns = !!on;
      if (this.os && this.ready) {
        this.ready.then((os) => os.update({audio: {input: {turn_detection: this._turnDetection()}}}), () => {});
      }
    }

    setApiKey(key) {
      this.apiKey = key || null;
      this.closeSession();
    }

    // ---- sources ---------------------------------------------------------------------------------
    _resetSource(source) {
      this.source = source;
      this.turns = [];
      this.byResponse = {};
      this.pending = null;
      this.active = null;
      this.durationMs = 0;
      this.wave = null;
      this.thumbs = [];
      this._stoppedLive = null;
      this.clearError();
      this.progress(null);
      if (this.answers) this.answers.replaceChildren(el("div", "omni-empty", "Answers appear here as they are written."));
      const player = $(this.media, ".omni-player");
      player.replaceChildren();
      return player;
    }

    async useFiles(files) {
      if (!files || (Array.isArray(files) && files.length === 0)) return;
      const uploadedAt = performance.now();
      files = Array.isArray(files) ? files : [files];
      const named = files.map((f) => ({name: f.orig_name || (f.path || "").split("/").pop(), url: f.url, mime: f.mime_type}));
      // Refuse what cannot be taken before anything changes: the current session and answers stay.
      const bad = named.filter((f) => !kindOf(f.name, f.mime));
      if (bad.length) {
        this.showError("unsupported", bad.map((f) => f.name).join(", ") + " is not a video, audio or image file",
                       "This file type is not supported: upload a video (mp4, webm, mov, mkv), an audio file or images (JPEG, PNG).");
        return;
      }
      const kinds = named.map((f) => kindOf(f.name, f.mime));
      const h = this.health || {};
      const blind = h.vision === false && kinds.some((k) => k !== "audio");
      const deaf = h.audio === false && kinds.includes("audio");
      if (blind || deaf) {
        this.showError(null, "Load an Omni checkpoint with python -m app --model DIR.",
                       "The loaded model (" + h.model + ") " + (blind ? "does not see: it takes no video or images."
                                                                       : "does not hear: it takes no audio."));
        return;
      }
      this.stopLive();
      const player = this._resetSource({kind: "file", files, uploadedAt});
      let sent;
      this.source.sending = new Promise((r) => { sent = r; });           // a question asked now waits for it
      try { await this._sendFiles(player, named, kinds); } finally { sent(); }
    }

    async _sendFiles(player, named, kinds) {
      const source = this.source;
      this.status("Reading " + named.map((f) => f.name).join(", ") + "...");
      let blobs;
      try {
        blobs = await Promise.all(named.map((f) => fetch(f.url).then((r) => { if (!r.ok) throw new Error(f.name + ": HTTP " + r.status); return r.blob(); })));
      } catch (e) {
        this.showError(null, "The upload could not be read back: " + e.message);
        return;
      }
      const parts = [];
      let timed = null;
      for (let i = 0; i < named.length; i++) {
        const kind = kinds[i];
        const url = await dataUrl(blobs[i]);
        if (kind === "image") {
          parts.push({type: "input_image", image_url: url});
          const img = el("img", "omni-image");
          img.src = URL.createObjectURL(blobs[i]);
          img.alt = named[i].name;
          player.append(img);
        } else {
          parts.push(kind === "audio" ? {type: "input_audio", audio_url: url} : {type: "input_video", video_url: url});
          if (!timed) timed = {kind, blob: blobs[i], name: named[i].name};
        }
      }
      if (this.source !== source) return;                 // another upload or a stream took over
      if (timed) this._filePlayer(player, timed);
      this.source.itemId = "item_ui_" + (++this._itemSeq) + "_" + Date.now().toString(36);
      this.source.sentAt = performance.now();
      this.source.encoding = true;
      let os;
      try { os = await this.session(true); } catch (e) { return; }
      os.send({type: "conversation.item.create",
               item: {id: this.source.itemId, type: "message", role: "user", content: parts}});
      this.progress(0);
      this.status("Sent " + named.map((f) => f.name).join(", ") + "; the server is decoding and encoding it...");
    }

    _filePlayer(player, media) {
      const p = el(media.kind === "audio" ? "audio" : "video", "omni-av");
      p.controls = true;
      p.preload = "auto";
      p.playsInline = true;
      p.src = URL.createObjectURL(media.blob);
      p.addEventListener("loadedmetadata", () => {
        if (isFinite(p.duration)) { this.durationMs = p.duration * 1000; this.drawStrip(); }
        if (media.kind === "video") this._videoThumbs(p.src, p.duration);
      });
      p.addEventListener("timeupdate", () => this._playhead());
      p.addEventListener("seeked", () => this._playhead());
      player.append(p);
      this._fileWave(media.blob);
    }

    async _fileWave(blob) {
      try {
        const ctx = new OfflineAudioContext(1, 1, 8000);
        const audio = await ctx.decodeAudioData(await blob.arrayBuffer());
        const x = audio.getChannelData(0);
        this.wave = {peaks: peaks(x, 1200, 1), columns: 1200, ms: audio.duration * 1000};
        if (!this.durationMs) this.durationMs = audio.duration * 1000;
        this.drawStrip();
      } catch (e) {
        this.wave = null;            // no audio track: the strip shows thumbnails only
      }
    }

    async _videoThumbs(src, duration) {
      if (!isFinite(duration) || duration <= 0) return;
      const v = document.createElement("video");
      v.muted = true;
      v.preload = "auto";
      v.src = src;
      await new Promise((r) => { v.onloadeddata = r; v.onerror = r; });
      const n = Math.max(4, Math.min(24, Math.floor(($(this.media, ".omni-visual").clientWidth || 640) / 72)));
      const source = this.source;
      for (let i = 0; i < n && this.source === source; i++) {
        const t = (i + 0.5) * duration / n;
        await new Promise((r) => { v.onseeked = r; v.onerror = r; v.currentTime = t; });
        if (!v.videoWidth) break;
        const c = document.createElement("canvas");
        c.width = 160; c.height = Math.round(160 * v.videoHeight / v.videoWidth);
        c.getContext("2d").drawImage(v, 0, 0, c.width, c.height);
        this.thumbs.push({t_ms: t * 1000, image: c});
        this.drawStrip();
      }
      v.removeAttribute("src");
    }

    async startMicrophone(voiceTurns) {
      if (voiceTurns !== undefined) this.voiceTurns = !!voiceTurns;
      if (this.health && this.health.audio === false) {
        this.showError(null, "this model has no audio encoder: it takes no audio");
        return;
      }
      const os = await this._liveSession();
      const live = this.live;
      if (!os || !live || live.mic) return;
      live.mic = true;
      try {
        await os.startMicrophone();
        if (this.live !== live) os.stopMicrophone();           // stopped while the browser asked for it
        else this.status("Microphone on.");
      } catch (e) {
        live.mic = false;
        this.showError(null, "The microphone could not be opened: " + e.message);
      }
    }

    async startCamera() {
      if (this.health && this.health.vision === false) {
        this.showError(null, "this model has no vision encoder: it takes no images");
        return;
      }
      const os = await this._liveSession();
      const live = this.live;
      if (!os || !live || live.camera) return;
      live.camera = true;
      const preview = el("video", "omni-av omni-camera");
      preview.muted = true;
      preview.playsInline = true;
      $(this.media, ".omni-player").prepend(preview);
      try {
        await os.startCamera(preview, 1);
        if (this.live !== live) { os.stopCamera(); preview.remove(); }
        else this.status("Camera on (1 frame a second).");
      } catch (e) {
        live.camera = false;
        preview.remove();
        this.showError(null, "The camera could not be opened: " + e.message);
      }
    }

    async _liveSession() {
      const fresh = !this.live;                          // a live stream is a session of its own
      if (fresh) {
        const player = this._resetSource({kind: "live"});
        this.live = {pcm: [], samples: 0, uncommitted: 0, frames: 0, mic: false, camera: false, inputTokens: null};
        this.wave = {live: [], bucket: LIVE_RATE / 20};            // one peak pair per 50 ms
        const audio = el("audio", "omni-av omni-recording");
        audio.controls = true;
        audio.addEventListener("timeupdate", () => this._playhead());
        audio.addEventListener("seeked", () => this._playhead());
        player.append(audio);
        this.live.timer = setInterval(() => this._liveTick(), 250);
      }
      try {
        return await this.session(fresh);
      } catch (e) {
        return null;
      }
    }

    _liveTick() {
      if (!this.live) return;
      const s = this.live.samples / LIVE_RATE;
      this.durationMs = Math.max(this.durationMs, s * 1000);
      const parts = [];
      if (this.live.mic || this.live.samples) parts.push(s.toFixed(1) + " s of audio");
      if (this.live.camera || this.live.frames) parts.push(this.live.frames + " camera frame" + (this.live.frames === 1 ? "" : "s"));
      let text = (this.live.mic || this.live.camera ? "Streaming: " : "Streamed: ") + parts.join(", ") + " sent";
      if (this.live.inputTokens !== null) text += "; the model has read " + this.live.inputTokens + " tokens of this session";
      this.status(text + ".");
      $(this.media, ".omni-intake").dataset.streamedMs = Math.round(s * 1000);
      this.drawStrip();
    }

    stopLive() {
      if (!this.live) return;
      if (this.os) { this.os.stopMicrophone(); this.os.stopCamera(); }
      const live = this.live;
      live.mic = live.camera = false;
      clearInterval(live.timer);
      this._liveTick();
      this._recording();
      const cam = $(this.media, ".omni-camera");
      if (cam) cam.remove();
      this.live = null;
      this._stoppedLive = live;
    }

    // The recording so far as the player's source, so a chip can seek it (the session clock of
    // live audio is the count of samples sent, which is this recording's clock too).
    _recording() {
      const live = this.live || this._stoppedLive;
      const audio = $(this.media, ".omni-recording");
      if (!live || !audio || !live.pcm.length) return;
      if (audio.src) URL.revokeObjectURL(audio.src);
      audio.src = URL.createObjectURL(wavBlob(live.pcm, LIVE_RATE));
    }

    _tap(event) {
      const live = this.live;
      if (!live) return;
      if (event.type === "input_audio_buffer.append") {
        const b = base64Bytes(event.audio);
        const pcm = new Int16Array(b.buffer, 0, b.length >> 1);
        if (live.samples < RECORD_MAX_S * LIVE_RATE) live.pcm.push(pcm);
        live.samples += pcm.length;
        live.uncommitted += pcm.length;
        const w = this.wave;
        for (let i = 0; i < pcm.length; i += w.bucket) {
          const p = peaks(pcm.subarray(i, Math.min(pcm.length, i + w.bucket)), 1, 1 / 32768);
          w.live.push(p[0], p[1]);
        }
      } else if (event.type === "input_image_buffer.append") {
        live.frames += 1;
        const img = new Image();
        img.src = "data:image/jpeg;base64," + event.image;
        this.thumbs.push({t_ms: event.timestamp_ms, image: img});
        if (this.thumbs.length > 240) this.thumbs.splice(0, this.thumbs.length - 240);
      }
    }

    // ---- questions and answers -------------------------------------------------------------------
    async ask(question, opts = {}) {
      question = (question || "").trim();
      if (!question) { this.status("Type a question first."); return; }
      if (this.pending || this.turns.some((t) => t.running)) {
        this.showError("conversation_already_has_active_response", "");
        return;
      }
      this.clearError();
      if (!this.source) {
        this._resetSource({kind: "text"}).append(el("div", "omni-empty", "No media: this question is answered from text alone."));
      }
      if (this.source.sending) await this.source.sending;
      let os;
      try { os = await this.session(false); } catch (e) { return; }
      if (this.live && this.live.uncommitted >= LIVE_RATE / 10) {     // a commit needs 100 ms
        os.send({type: "input_audio_buffer.commit"});
        this.live.uncommitted = 0;
      }
      if (this.live) this._recording();
      const budget = Number(opts.budget) > 0 ? Math.round(Number(opts.budget)) : null;
      const turn = this._newTurn(question, opts.reasoning !== false);
      this.pending = turn;
      turn.askedAt = performance.now();
      os.send({type: "conversation.item.create",
               item: {type: "message", role: "user", content: [{type: "input_text", text: question}]}});
      const omni = {reasoning: opts.reasoning !== false, reasoning_budget: budget,
                    temperature: Number(opts.temperature) || 0, top_p: Number(opts.topP) || 1};
      const choices = opts.guided === false ? null : optionTexts(question);
      if (choices) omni.choices = choices;       // guided choice: the answer is one of the options
      os.send({type: "response.create", response: {max_output_tokens: Math.round(Number(opts.maxTokens) || 512), omni}});
    }

    cancel() {
      if (this.os && this.turns.some((t) => t.running)) this.os.cancel();
    }

    _newTurn(question, reasoning) {
      const turn = {question, reasoning, text: "", annotations: [], running: true, deltas: 0, id: null, node: null,
                    askedAt: performance.now(), firstDeltaAt: null, status: "waiting"};
      if (this.answers) {
        const empty = $(this.answers, ".omni-empty");
        if (empty) empty.remove();
        turn.node = el("article", "omni-turn");
        this.answers.prepend(turn.node);
      }
      this.turns.push(turn);
      this.setActive(turn);
      this._render(turn);
      return turn;
    }

    _created(response) {
      let turn = this.pending;
      this.pending = null;
      if (!turn) turn = this._newTurn("(spoken question)", true);        // server VAD answered a turn
      turn.id = response.id;
      turn.status = "thinking";
      this.byResponse[response.id] = turn;
      if (turn.node) turn.node.dataset.responseId = response.id;
      this._render(turn);
    }

    _delta(id, delta) {
      const turn = this.byResponse[id];
      if (!turn) return;
      if (turn.firstDeltaAt === null) {
        turn.firstDeltaAt = performance.now();
        if (turn.node) turn.node.dataset.firstTokenMs = Math.round(turn.firstDeltaAt - turn.askedAt);
      }
      turn.text += delta;
      turn.deltas += 1;
      turn.status = "writing";
      this._render(turn);
    }

    _annotation(id, a) {
      const turn = this.byResponse[id];
      if (!turn) return;
      turn.annotations.push(a);
      this._render(turn);
    }

    _done(response) {
      const turn = this.byResponse[response.id];
      if (!turn) return;
      turn.running = false;
      turn.status = response.status;
      turn.usage = response.usage || {};
      if (this.live || this._stoppedLive) {
        const live = this.live || this._stoppedLive;
        live.inputTokens = turn.usage.input_tokens;
        this._liveTick();
      }
      if (response.status === "failed" && response.status_details && response.status_details.error) {
        this.showError(response.status_details.error.code, response.status_details.error.message);
      }
      this._render(turn);
    }

    _error(error) {
      const code = error.code;
      const src = this.source;
      const param = error.param || "";
      const upload = src && src.kind === "file" && src.encoding &&
                     (param === src.itemId || (param.startsWith("item") && MEDIA_ERRORS.includes(code)));
      if (upload) {
        this.source.encoding = false;
        this.progress(null);
        this.durationMs = 0;
        this.thumbs = [];
        this.wave = null;
        $(this.media, ".omni-player").replaceChildren(el("div", "omni-empty", "Nothing to play: the upload was refused."));
        this.drawStrip();
        this.status("Nothing was taken in from this upload.");
      }
      else if (this.pending && !this.turns.some((t) => t.running && t.id)) {    // the question was refused
        const turn = this.pending;
        this.pending = null;
        turn.running = false;
        turn.status = "refused";
        this._render(turn);
      }
      let message = error.message || "";
      if (upload) {                             // name the person's file, not the server's copy of it
        const names = src.files.map((f) => f.orig_name || (f.path || "").split("/").pop()).join(", ");
        message = names + ": " + message.replace(/^upload:[\w-]+:\s*/, "");
      }
      this.showError(code, message);
    }

    _progress(e) {
      if (!this.source || e.item_id !== this.source.itemId || !e.total_ms) return;
      this.progress(e.done_ms / e.total_ms);
      this.status("Decoding and encoding: " + (e.done_ms / 1000).toFixed(1) + " of " + (e.total_ms / 1000).toFixed(1) + " s.");
      this.source.totalMs = e.total_ms;
    }

    // A narrating model's caption of each chunk it read: the latest few, each seeking to its chunk.
    _narration(e) {
      if (!this.media || !e.text) return;
      const list = $(this.media, ".omni-narration");
      const li = el("li", "omni-narration-line");
      const chip = el("button", "omni-chip", fmtSpan(e));
      chip.type = "button";
      chip.dataset.startMs = String(e.start_ms);
      chip.title = "seek to " + fmtTime(e.start_ms);
      li.append(chip, el("span", "", " " + e.text.replace(/^\(|\)$/g, "")));
      list.append(li);
      while (list.children.length > NARRATION_LINES) list.firstChild.remove();
      list.hidden = false;
    }

    _itemDone(item) {
      if (!this.source || !item || item.id !== this.source.itemId || !this.source.encoding) return;
      this.source.encoding = false;
      this.source.takenAt = performance.now();
      this.progress(null);
      const took = ((this.source.takenAt - this.source.sentAt) / 1000).toFixed(1);
      const len = this.source.totalMs ? (this.source.totalMs / 1000).toFixed(1) + " s of media" : "the upload";
      this.status("Taken in: " + len + " (" + took + " s to decode and encode). Ask away.");
      $(this.media, ".omni-intake").dataset.ready = "1";
    }

    // ---- drawing ---------------------------------------------------------------------------------
    // Text is drawn at once, delta by delta; the strip (canvases) at most once a frame.
    _stripSoon() {
      if (this._raf) return;
      this._raf = requestAnimationFrame(() => { this._raf = 0; this.drawStrip(); });
    }

    setActive(turn) {
      if (this.active === turn) return;
      if (this.active && this.active.node) this.active.node.classList.remove("omni-active");
      this.active = turn;
      if (turn && turn.node) turn.node.classList.add("omni-active");
      this.drawStrip();
    }

    // Split the text into reasoning steps (one a line) and the answer, with each annotation as a
    // chip in its place; an annotation in the answer is evidence.
    _render(turn) {
      if (!turn.node) return;
      const text = turn.text;
      let cut = turn.reasoning ? text.indexOf(THINK_END) : 0;
      if (turn.reasoning && cut < 0) cut = text.length;
      let answerStart = turn.reasoning ? Math.min(text.length, cut + (cut < text.length ? THINK_END.length : 0)) : 0;
      while (answerStart < text.length && /\s/.test(text[answerStart])) answerStart++;     // the line break after </think>
      const node = turn.node;
      node.replaceChildren();
      node.dataset.status = turn.status;
      node.dataset.deltas = turn.deltas;
      const q = el("div", "omni-q");
      const nl = turn.question.indexOf("\n");
      if (nl < 0) q.textContent = turn.question;
      else {                                  // a long question (options, instructions) folds after its first line
        const d = el("details");
        d.append(el("summary", "", turn.question.slice(0, nl)), el("div", "", turn.question.slice(nl + 1)));
        q.append(d);
      }
      node.append(q);
      if (turn.reasoning) {
        const box = el("section", "omni-reasoning");
        box.append(el("div", "omni-label", "Reasoning" + (cut === text.length && turn.running ? " (thinking...)" : "")));
        const steps = el("ol", "omni-steps");
        let at = text.startsWith("<think>") ? 7 : 0;
        while (at < cut) {
          let end = text.indexOf("\n", at);
          if (end < 0 || end > cut) end = cut;
          if (text.slice(at, end).trim()) {
            const li = el("li", "omni-step");
            const spans = turn.annotations.filter((a) => a.start_index >= at && a.start_index < end);
            if (spans.length) { li.dataset.startMs = spans[0].start_ms; li.classList.add("omni-step-timed"); }
            this._inline(li, text, at, end, spans, false);
            steps.append(li);
          }
          at = end + 1;
        }
        box.append(steps);
        node.append(box);
      }
      if (answerStart < text.length || !turn.reasoning) {
        const box = el("section", "omni-final");
        box.append(el("div", "omni-label", "Answer"));
        const p = el("p", "omni-answer-text");
        const spans = turn.annotations.filter((a) => a.start_index >= answerStart);
        this._inline(p, text, answerStart, text.length, spans, true);
        box.append(p);
        node.append(box);
      }
      const meta = el("div", "omni-meta");
      if (turn.status === "waiting" || turn.status === "thinking") {
        meta.textContent = turn.firstDeltaAt === null ? "Waiting for the first token..." : "";
      } else if (!turn.running) {
        const u = turn.usage || {};
        const bits = [turn.status];
        if (u.output_tokens !== undefined) bits.push(u.output_tokens + " tokens");
        if (turn.firstDeltaAt !== null) bits.push("first token after " + Math.round(turn.firstDeltaAt - turn.askedAt) + " ms");
        if (u.input_tokens) bits.push(u.input_tokens + " tokens read");
        meta.textContent = bits.join(" \u00b7 ");
      }
      node.append(meta);
      if (turn === this.active) this._stripSoon();
    }

    _inline(parent, text, from, to, spans, evidence) {
      let at = from;
      for (const a of spans.slice().sort((x, y) => x.start_index - y.start_index)) {
        if (a.start_index < at) continue;
        parent.append(document.createTextNode(text.slice(at, a.start_index)));
        const chip = el("button", "omni-chip" + (evidence ? " omni-evidence" : ""), fmtSpan(a));
        chip.type = "button";
        chip.dataset.startMs = a.start_ms;
        chip.dataset.endMs = a.end_ms;
        chip.title = "\u201c" + text.slice(a.start_index, Math.min(to, a.end_index)) + "\u201d: seek to " + fmtTime(a.start_ms);
        parent.append(chip);
        at = Math.min(to, a.end_index);
      }
      parent.append(document.createTextNode(text.slice(at, to)));
    }

    player() {
      return this.media ? this.media.querySelector(".omni-player audio.omni-av[src], .omni-player video.omni-av:not(.omni-camera)") : null;
    }

    seek(ms) {
      const p = this.player();
      const t = Math.max(0, ms) / 1000;
      if (p) {
        if (p.readyState >= 1) p.currentTime = t;
        else p.addEventListener("loadedmetadata", () => { p.currentTime = t; }, {once: true});
      } else if (this.thumbs.length && this.source && this.source.kind === "live") {
        let best = this.thumbs[0];                 // no recording to seek: show the frame sent nearest that time
        for (const f of this.thumbs) if (Math.abs(f.t_ms - ms) < Math.abs(best.t_ms - ms)) best = f;
        let img = $(this.media, ".omni-frame");
        if (!img) { img = el("img", "omni-image omni-frame"); $(this.media, ".omni-player").append(img); }
        img.src = best.image.src || best.image.toDataURL();
        img.alt = "camera frame at " + fmtTime(best.t_ms);
      }
      this._seekMs = ms;
      this._playhead();
    }

    _playhead() {
      if (!this.media) return;
      const p = this.player();
      const ms = p ? p.currentTime * 1000 : (this._seekMs || 0);
      const head = $(this.media, ".omni-playhead");
      const dur = this._stripMs || 0;
      head.hidden = !(dur > 0);
      if (dur > 0) head.style.left = (100 * Math.min(1, ms / dur)).toFixed(2) + "%";
      const turn = this.active;                       // light up the steps whose span is playing
      if (turn && turn.node) {
        for (const c of turn.node.querySelectorAll(".omni-chip")) {
          const a = Number(c.dataset.startMs), b = Math.max(Number(c.dataset.endMs), a + 500);
          c.classList.toggle("omni-now", ms >= a && ms <= b);
        }
      }
    }

    // The strip: thumbnails over the waveform, the active turn's spans on top (evidence highlighted).
    drawStrip() {
      if (!this.media) return;
      const strip = $(this.media, ".omni-visual");
      let dur = this.durationMs;
      if (this.source && this.source.kind === "live" && dur > 0 && this.active) {      // spans past the stream's end
        for (const a of this.active.annotations) dur = Math.max(dur, a.end_ms);
      }
      this._stripMs = dur;
      strip.classList.toggle("omni-has-media", dur > 0);
      const w = Math.max(1, strip.clientWidth);
      const dpr = window.devicePixelRatio || 1;
      const thumbs = $(strip, ".omni-thumbs"), wave = $(strip, ".omni-wave");
      for (const c of [thumbs, wave]) {
        c.width = Math.round(w * dpr);
        c.height = Math.round(c.clientHeight * dpr) || 1;
      }
      if (dur > 0 && this.thumbs.length) {
        const g = thumbs.getContext("2d");
        const h = thumbs.height;
        for (const t of this.thumbs) {
          const img = t.image;
          const iw = img.width || img.naturalWidth, ih = img.height || img.naturalHeight;
          if (!iw || !ih) continue;
          const tw = h * iw / ih;
          const x = Math.min(thumbs.width - tw, Math.max(0, (t.t_ms / dur) * thumbs.width - tw / 2));
          g.drawImage(img, x, 0, tw, h);
        }
      }
      if (dur > 0 && this.wave) {
        const g = wave.getContext("2d");
        const h = wave.height, mid = h / 2;
        g.fillStyle = getComputedStyle(strip).getPropertyValue("--omni-wave") || "#4a7bd0";
        let p, covered;
        if (this.wave.live) {
          p = Float32Array.from(this.wave.live);
          covered = (p.length / 2) * (this.wave.bucket / LIVE_RATE) * 1000 / dur;
        } else {
          p = this.wave.peaks;
          covered = this.wave.ms / dur;
        }
        const n = p.length / 2, cols = Math.max(1, Math.round(wave.width * Math.min(1, covered)));
        for (let x = 0; x < cols; x++) {
          const a = Math.floor(x * n / cols), b = Math.max(a + 1, Math.floor((x + 1) * n / cols));
          let lo = 0, hi = 0;
          for (let i = a; i < b && i < n; i++) { lo = Math.min(lo, p[2 * i]); hi = Math.max(hi, p[2 * i + 1]); }
          g.fillRect(x, mid - hi * mid, 1, Math.max(1, (hi - lo) * mid));
        }
      }
      const layer = $(strip, ".omni-spans");
      layer.replaceChildren();
      const turn = this.active;
      if (dur > 0 && turn) {
        const cut = turn.reasoning ? turn.text.indexOf(THINK_END) : 0;
        for (const a of turn.annotations) {
          const evidence = !turn.reasoning || (cut >= 0 && a.start_index > cut);
          const s = el("div", "omni-span" + (evidence ? " omni-evidence-span" : ""));
          const left = Math.min(100, 100 * a.start_ms / dur);
          s.style.left = left.toFixed(2) + "%";
          s.style.width = Math.max(0.5, Math.min(100 - left, 100 * (a.end_ms - a.start_ms) / dur)).toFixed(2) + "%";
          s.dataset.startMs = a.start_ms;
          s.dataset.endMs = a.end_ms;
          s.title = (evidence ? "evidence " : "reasoning ") + fmtSpan(a);
          layer.append(s);
        }
      }
      this._playhead();
    }
  }

  window.omniUI = new OmniUI();
})();
