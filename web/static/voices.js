// The voices page: the voice library (/api/voices) with the key kept in this browser: upload a file or
// record from the microphone (MediaRecorder, straight to /api/extract_voice), list, play, rename, delete.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const MAX_RECORD_S = 60;
  const say = (id, text, cls) => { $(id).textContent = text; $(id).className = cls || "muted"; };
  $("key").value = TH.key();

  // fetch with the key; throws Error(the hub's message) on a non-2xx answer (both error shapes)
  async function call(method, path, body) {
    const opt = { method, headers: TH.headers() };
    if (body instanceof FormData) opt.body = body;
    else if (body !== undefined) {
      opt.headers["Content-Type"] = "application/json";
      opt.body = JSON.stringify(body);
    }
    const r = await fetch(path, opt);
    if (r.ok) return r;
    let msg = "HTTP " + r.status;
    try {
      const d = await r.json();
      msg = (d.error && d.error.message) || d.message || d.detail || msg;
    } catch (e) { /* not JSON */ }
    const err = new Error(msg);
    err.status = r.status;
    throw err;
  }

  const when = (iso) => {
    const d = new Date(iso);
    return isNaN(d) ? iso || "" : d.toLocaleString();
  };

  let playUrl = null;
  async function play(v) {
    try {
      const blob = await (await call("GET", "/api/voices/" + encodeURIComponent(v.voice_id) + "/audio")).blob();
      if (playUrl) URL.revokeObjectURL(playUrl);
      playUrl = URL.createObjectURL(blob);
      $("player").src = playUrl;
      $("player").dataset.voice = v.voice_id;
      say("playing", "reference of " + v.name + " (" + blob.size + " bytes)");
      $("player").play().catch(() => { /* the browser may want a gesture: the controls are there */ });
    } catch (e) { say("playing", e.message, "error"); }
  }

  async function rename(v, input) {
    const name = input.value.trim();
    if (!name || name === v.name) return;
    try {
      await call("PATCH", "/api/voices/" + encodeURIComponent(v.voice_id), { voice_name: name });
      say("state", "renamed " + v.voice_id + " to " + name, "ok");
    } catch (e) { say("state", e.message, "error"); }
    list();
  }

  async function remove(v) {
    if (!window.confirm("Delete the voice " + v.name + " (" + v.voice_id + ")?")) return;
    try {
      await call("DELETE", "/api/voices/" + encodeURIComponent(v.voice_id));
      say("state", "deleted " + v.voice_id, "ok");
    } catch (e) { say("state", e.message, "error"); }
    list();
  }

  async function list() {
    try {
      const d = await (await call("GET", "/api/voices")).json();
      const mine = (d.voices || []).filter((v) => v.type !== "configured");
      $("count").textContent = String(mine.length);
      $("voices").replaceChildren(...mine.map((v) => {
        const input = TH.el("input", { value: v.name, maxlength: "200", "aria-label": "name of " + v.voice_id });
        input.addEventListener("keydown", (ev) => { if (ev.key === "Enter") rename(v, input); });
        return TH.el("tr", { "data-voice": v.voice_id },
          TH.el("td", {}, input), TH.el("td", {}, TH.el("code", {}, v.voice_id)), TH.el("td", {}, v.engine || "any"),
          TH.el("td", {}, v.language || ""), TH.el("td", { class: "dur" }, TH.fmt(v.duration_seconds, 1) + " s"),
          TH.el("td", { title: v.created_at }, when(v.created_at)), TH.el("td", { class: "owner" }, v.owner || ""),
          TH.el("td", { class: "actions" },
            TH.el("button", { class: "secondary play", onclick: () => play(v) }, "▶ play"), " ",
            TH.el("button", { class: "secondary rename", onclick: () => rename(v, input) }, "rename"), " ",
            TH.el("button", { class: "danger delete", onclick: () => remove(v) }, "delete")));
      }));
      say("msg", mine.length ? "" : "no voices yet");
    } catch (e) {
      $("count").textContent = "?";
      say("msg", e.status === 401 ? "this hub needs an API key: " + e.message : e.message, "error");
    }
  }

  async function upload(blob, filename) {
    const f = new FormData();
    f.append("audio", blob, filename);
    for (const [field, id] of [["voice_name", "vname"], ["voice_id", "vid"], ["language", "vlang"],
      ["engine", "vengine"], ["reference_text", "vtext"]]) {
      const v = $(id).value.trim();
      if (v) f.append(field, v);
    }
    say("state", "uploading " + Math.round(blob.size / 1024) + " KiB…");
    $("upload").disabled = true;
    try {
      const d = await (await call("POST", "/api/extract_voice", f)).json();
      say("state", "made " + d.voice_id + " (" + TH.fmt(d.duration_seconds, 1) + " s)", "ok");
      $("state").dataset.voice = d.voice_id;
      $("vid").value = "";
    } catch (e) {
      say("state", e.message, "error");
    } finally {
      $("upload").disabled = false;
    }
    list();
  }

  $("upload").addEventListener("click", () => {
    const file = $("file").files[0];
    if (!file) { say("state", "choose a file first", "error"); return; }
    upload(file, file.name);
  });

  // the microphone: MediaRecorder chunks, then one upload when stopped (or at MAX_RECORD_S)
  let rec = null, ticker = null;
  $("rec").addEventListener("click", async () => {
    if (!navigator.mediaDevices || !window.MediaRecorder) {
      say("state", "this browser cannot record here (it needs https or localhost)", "error");
      return;
    }
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    } catch (e) {
      say("state", "no microphone: " + e.message, "error");
      return;
    }
    const type = ["audio/webm;codecs=opus", "audio/ogg;codecs=opus", "audio/webm", "audio/mp4"]
      .find((t) => MediaRecorder.isTypeSupported(t));
    rec = new MediaRecorder(stream, type ? { mimeType: type } : undefined);
    const chunks = [];
    const t0 = performance.now();
    rec.ondataavailable = (ev) => { if (ev.data.size) chunks.push(ev.data); };
    rec.onstop = () => {
      clearInterval(ticker);
      stream.getTracks().forEach((t) => t.stop());
      $("rec").disabled = false;
      $("stop").disabled = true;
      const mime = rec.mimeType || type || "audio/webm";
      rec = null;
      const blob = new Blob(chunks, { type: mime });
      upload(blob, "recording." + (/ogg/.test(mime) ? "ogg" : /mp4/.test(mime) ? "m4a" : "webm"));
    };
    rec.start(250);
    $("rec").disabled = true;
    $("stop").disabled = false;
    say("state", "recording…");
    ticker = setInterval(() => {
      const s = (performance.now() - t0) / 1000;
      $("elapsed").textContent = s.toFixed(1) + " s";
      $("elapsed").dataset.seconds = s.toFixed(1);
      if (s >= MAX_RECORD_S && rec && rec.state === "recording") rec.stop();
    }, 100);
  });
  $("stop").addEventListener("click", () => { if (rec && rec.state === "recording") rec.stop(); });

  $("save").addEventListener("click", () => { TH.setKey($("key").value.trim()); list(); });
  list();
})();
