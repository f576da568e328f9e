// The playground: POST /v1/audio/speech with what the form says, play and offer the result.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  $("key").value = TH.key();
  TH.json("GET", "/v1/audio/voices").then((v) => {
    const names = (v.voices || v.data || []).map((x) => typeof x === "string" ? x : x.id || x.name).filter(Boolean);
    if (names.length) $("voice").replaceChildren(...names.map((n) => TH.el("option", { value: n }, n)));
    if (names.includes("alloy")) $("voice").value = "alloy";
  }).catch(() => {});
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
      const r = await fetch("/v1/audio/speech", {
        method: "POST",
        headers: TH.headers({ "Content-Type": "application/json" }),
        body: JSON.stringify({ model: "tts-1", input: $("text").value, voice: $("voice").value,
          response_format: fmt, speed: Number($("speed").value) }),
      });
      if (!r.ok) {
        let msg = "HTTP " + r.status;
        try { msg = (await r.json()).error.message; } catch (e) {}
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
