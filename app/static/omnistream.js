// omnistream.js: a browser client for omnistream's WS /v1/realtime (no build step).
//
//   const os = new OmniStream("ws://127.0.0.1:7860/v1/realtime", {apiKey: "..."});
//   os.on("delta", (text) => ...); os.on("annotation", (a) => ...); os.on("done", (response) => ...);
//   await os.connect();
//   await os.startMicrophone();            // PCM16 at 24 kHz, server VAD answers each turn
//   await os.startCamera(videoElement, 1);  // JPEG frames at 1 fps on the session clock
//   os.ask("What happened so far?");
//
// The API key travels as the subprotocol `openai-insecure-api-key.KEY` (browsers cannot set
// headers on a WebSocket); the server echoes `realtime`. Events are the OpenAI Realtime GA events
// plus omnistream's extensions (media.progress, media.dropped, response.output_text.annotation.added,
// session.going_away); `on(type, fn)` receives any of them by name too.
(function (root) {
  "use strict";

  class OmniStream {
    constructor(url, options = {}) {
      this.url = url;
      this.apiKey = options.apiKey || null;
      this.session = null;
      this.handlers = {};
      this.ws = null;
      this._mic = null;
      this._camera = null;
      this._t0 = performance.now();
    }

    on(type, fn) { (this.handlers[type] = this.handlers[type] || []).push(fn); return this; }

    _fire(type, ...args) { (this.handlers[type] || []).forEach((fn) => fn(...args)); }

    connect(resume = false) {
      const protocols = ["realtime"];
      if (this.apiKey) protocols.push("openai-insecure-api-key." + this.apiKey);
      let url = this.url;
      if (resume && this.session) {
        url += (url.includes("?") ? "&" : "?") + "session_id=" + encodeURIComponent(this.session.id) +
               "&resume_token=" + encodeURIComponent(this.session.omni.resume_token);
      }
      return new Promise((resolve, reject) => {
        const ws = new WebSocket(url, protocols);
        this.ws = ws;
        ws.onmessage = (m) => {
          const e = JSON.parse(m.data);
          if (e.type === "session.created") { this.session = e.session; resolve(e.session); }
          if (e.type === "response.output_text.delta") this._fire("delta", e.delta, e);
          if (e.type === "response.output_text.annotation.added") this._fire("annotation", e.annotation, e);
          if (e.type === "response.done") this._fire("done", e.response, e);
          if (e.type === "error") { this._fire("error", e.error, e); if (!this.session) reject(new Error(e.error.message)); }
          if (e.type === "session.going_away") this._fire("going_away", e);
          if (e.type !== "error") this._fire(e.type, e);         // "error" fired above, as (error, event)
        };
        ws.onclose = (c) => this._fire("close", c);
        ws.onerror = () => reject(new Error("cannot connect to " + url));
      });
    }

    send(event) { this.ws.send(JSON.stringify(event)); }

    update(session) { this.send({type: "session.update", session}); }

    ask(text, response = {}) {
      if (text) {
        this.send({type: "conversation.item.create",
                   item: {type: "message", role: "user", content: [{type: "input_text", text}]}});
      }
      this.send({type: "response.create", response});
    }

    cancel() { this.send({type: "response.cancel"}); }

    clockMs() { return Math.round(performance.now() - this._t0); }

    sendFile(file) {        // an image, audio or video file as a conversation item
      return new Promise((resolve) => {
        const reader = new FileReader();
        reader.onload = () => {
          const url = reader.result;
          const kind = file.type.split("/")[0];
          const part = kind === "image" ? {type: "input_image", image_url: url}
                     : kind === "audio" ? {type: "input_audio", audio_url: url}
                     : {type: "input_video", video_url: url};
          this.send({type: "conversation.item.create", item: {type: "message", role: "user", content: [part]}});
          resolve();
        };
        reader.readAsDataURL(file);
      });
    }

    async startMicrophone() {
      const stream = await navigator.mediaDevices.getUserMedia({audio: {channelCount: 1}});
      const ctx = new AudioContext({sampleRate: 24000});
      const source = ctx.createMediaStreamSource(stream);
      const proc = ctx.createScriptProcessor(2048, 1, 1);
      proc.onaudioprocess = (ev) => {
        const f = ev.inputBuffer.getChannelData(0);
        const pcm = new Int16Array(f.length);
        for (let i = 0; i < f.length; i++) pcm[i] = Math.max(-32768, Math.min(32767, f[i] * 32768));
        let bin = "";
        const bytes = new Uint8Array(pcm.buffer);
        for (let i = 0; i < bytes.length; i++) bin += String.fromCharCode(bytes[i]);
        if (this.ws && this.ws.readyState === 1) this.send({type: "input_audio_buffer.append", audio: btoa(bin)});
      };
      source.connect(proc);
      proc.connect(ctx.destination);
      this._mic = {stream, ctx};
    }

    stopMicrophone() {
      if (!this._mic) return;
      this._mic.stream.getTracks().forEach((t) => t.stop());
      this._mic.ctx.close();
      this._mic = null;
    }

    async startCamera(video, fps = 1, screen = false) {
      const stream = screen ? await navigator.mediaDevices.getDisplayMedia({video: true})
                            : await navigator.mediaDevices.getUserMedia({video: true});
      video.srcObject = stream;
      await video.play();
      const canvas = document.createElement("canvas");
      const timer = setInterval(() => {
        if (!video.videoWidth || !this.ws || this.ws.readyState !== 1) return;
        const scale = Math.min(1, 640 / video.videoWidth);
        canvas.width = Math.round(video.videoWidth * scale);
        canvas.height = Math.round(video.videoHeight * scale);
        canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
        const jpeg = canvas.toDataURL("image/jpeg", 0.8);
        this.send({type: "input_image_buffer.append", image: jpeg.split(",")[1], timestamp_ms: this.clockMs()});
      }, 1000 / fps);
      this._camera = {stream, timer};
    }

    stopCamera() {
      if (!this._camera) return;
      clearInterval(this._camera.timer);
      this._camera.stream.getTracks().forEach((t) => t.stop());
      this._camera = null;
    }

    close() { this.stopMicrophone(); this.stopCamera(); if (this.ws) this.ws.close(); }
  }

  root.OmniStream = OmniStream;
  if (typeof module !== "undefined") module.exports = OmniStream;
})(typeof window !== "undefined" ? window : globalThis);
