// The playground: POST /v1/audio/speech (or /api/synthesize for a library voice) with what the form says,
// play and offer the result.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  $("key").value = TH.key();
  // the picker: the catalogue voices, then the caller's library voices (spoken through /api/synthesize)
  const LIB = "library:";
  let catalogue = [], library = [];
  function fill() {
    const keep = $("voice").value;
    const kids = catalogue.map((n) => TH.el("option", { value: n }, n));
    if (library.length)
      kids.push(TH.el("optgroup", { label: "Library voices", id: "library" }, ...library.map((v) =>
        TH.el("option", { value: LIB + v.voice_id }, v.name + " (" + v.voice_id + ")"))));
    if (kids.length) $("voice").replaceChildren(...kids);
    const values = [...$("voice").options].map((o) => o.value);
    if (values.includes(keep)) $("voice").value = keep;
    else if (values.includes("alloy")) $("voice").value = "alloy";
  }
  TH.json("GET", "/v1/audio/voices").then((v) => {
    catalogue = (v.voices || v.data || []).map((x) => typeof x === "string" ? x : x.id || x.name).filter(Boolean);
    fill();
  }).catch(() => {});
  const loadLibrary = () => TH.json("GET", "/api/voices").then((d) => {
    library = (d.voices || []).filter((v) => v.type !== "configured");
    fill();
  }).catch(() => {});
  loadLibrary();
  $("key").addEventListener("change", () => { TH.setKey($("key").value.trim()); loadLibrary(); });
  let url = null;
  $("form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    TH.setKey($("key").value.trim());
    const fmt = $("format").value;
    $("go").disabled = true;
    $("state").textContent = "speaking…";
    $("state").className = "muted";
    $("info").textContent = "";
    const t0 = performance.now();
    try {
      const voice = $("voice").value;
      const lib = voice.startsWith(LIB);
      const r = await fetch(lib ? "/api/synthesize" : "/v1/audio/speech", {
        method: "POST",
        headers: TH.headers({ "Content-Type": "application/json" }),
        body: JSON.stringify(lib
          ? { text: $("text").value, voice_id: voice.slice(LIB.length), output_format: fmt,
            speed: Number($("speed").value) }
          : { model: "tts-1", input: $("text").value, voice, response_format: fmt, speed: Number($("speed").value) }),
      });
      if (!r.ok) {
        let msg = "HTTP " + r.status;
        try {
          const d = await r.json();
          msg = (d.error && d.error.message) || d.message || msg;
        } catch (e) {}
        throw new Error(msg);
      }
      const blob = await r.blob();
      const ms = performance.now() - t0;
      if (url) URL.revokeObjectURL(url);
      url = URL.createObjectURL(blob);
      $("audio").src = url;
      $("download").href = url;
      $("download").download = "ttshub." + fmt;
      $("download").hidden = false;
      $("info").textContent = blob.size + " bytes of " + (r.headers.get("Content-Type") || fmt) + " from " +
        (r.headers.get("X-Provider") || "?") + " (cache " + (r.headers.get("X-Cache") || "?") + ") in " +
        ms.toFixed(0) + " ms";
      $("state").textContent = "done";
      $("state").className = "ok";
    } catch (e) {
      $("state").textContent = e.message;
      $("state").className = "error";
    } finally {
      $("go").disabled = false;
    }
  });
})();
