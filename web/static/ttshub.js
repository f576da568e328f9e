// Shared helpers of the ttshub pages: no framework, no CDN.
"use strict";
const TH = {
  key() { return localStorage.getItem("ttshub.key") || ""; },
  setKey(k) { k ? localStorage.setItem("ttshub.key", k) : localStorage.removeItem("ttshub.key"); },
  headers(extra) {
    const h = Object.assign({}, extra || {});
    const k = TH.key();
    if (k) h.Authorization = "Bearer " + k;
    return h;
  },
  // JSON request; throws Error(message) with the server's own error message on a non-2xx answer
  async json(method, path, body) {
    const opt = { method, headers: TH.headers(body !== undefined ? { "Content-Type": "application/json" } : {}) };
    if (body !== undefined) opt.body = JSON.stringify(body);
    const r = await fetch(path, opt);
    const text = await r.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
    if (!r.ok) {
      const msg = data && (data.error ? data.error.message : data.message) || ("HTTP " + r.status);
      const err = new Error(msg);
      err.status = r.status;
      err.code = data && (data.error ? data.error.code : data.code) || "";
      throw err;
    }
    return data;
  },
  el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else if (v !== undefined && v !== null) e.setAttribute(k, v);
    }
    for (const kid of kids) if (kid !== null && kid !== undefined) e.append(kid instanceof Node ? kid : String(kid));
    return e;
  },
  pill(text) { return TH.el("span", { class: "pill " + text }, text); },
  fmt(n, digits) { return n === undefined || n === null ? "–" : Number(n).toFixed(digits || 0); },
  // The live feed with reconnection; onmsg(type, data); onstate("connecting" | "connected" | "disconnected")
  feed(onmsg, onstate) {
    let delay = 500, ws = null, stopped = false;
    const open = () => {
      onstate("connecting");
      ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
      ws.onopen = () => { delay = 500; onstate("connected"); };
      ws.onmessage = (ev) => { try { const m = JSON.parse(ev.data); onmsg(m.type, m.data, m.timestamp); } catch (e) {} };
      ws.onclose = () => {
        onstate("disconnected");
        if (!stopped) setTimeout(open, delay);
        delay = Math.min(delay * 2, 10000);
      };
    };
    open();
    return { send: (o) => ws && ws.readyState === 1 && ws.send(JSON.stringify(o)), stop: () => { stopped = true; ws.close(); } };
  },
};
