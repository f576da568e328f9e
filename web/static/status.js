// The status page: the /api/status document, then the live feed (/ws) keeps it current and feeds the
// live charts (charts.js).
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const events = [];
  function render(s) {
    $("health").textContent = s.status;
    $("health").className = "pill " + s.status;
    $("s-requests").textContent = s.requests.total;
    $("s-errors").textContent = s.requests.errors;
    $("s-inflight").textContent = s.requests.in_flight;
    $("s-p50").textContent = s.latency_ms.samples ? TH.fmt(s.latency_ms.p50, 1) : "–";
    $("s-p99").textContent = s.latency_ms.samples ? TH.fmt(s.latency_ms.p99, 1) : "–";
    $("s-nodes").textContent = s.nodes.online + " / " + s.nodes.total;
    const up = s.uptime_seconds;
    $("s-uptime").textContent = up < 3600 ? Math.floor(up / 60) + " min" : (up / 3600).toFixed(1) + " h";
    $("providers").replaceChildren(...Object.entries(s.providers).map(([name, p]) =>
      TH.el("tr", { "data-provider": name }, TH.el("td", {}, name), TH.el("td", {}, p.type),
        TH.el("td", {}, TH.pill(p.breaker)), TH.el("td", {}, p.in_flight), TH.el("td", {}, p.queued))));
    $("engines").replaceChildren(...Object.entries(s.engines).map(([name, e]) =>
      TH.el("tr", {}, TH.el("td", {}, name), TH.el("td", {}, e.providers || 0), TH.el("td", {}, e.nodes),
        TH.el("td", {}, e.online), TH.el("td", {}, e.in_flight))));
    $("announcements").replaceChildren(...s.announcements.map((a) =>
      TH.el("div", { class: "banner " + a.level, "data-id": a.id }, a.message)));
  }
  // live charts: rates from the difference of the totals between two status documents
  const charts = {
    rps: THChart.make($("c-rps"), { title: "requests per second", digits: 1 }),
    errors: THChart.make($("c-errors"), { title: "errors per second", digits: 2 }),
    latency: THChart.make($("c-latency"), { title: "latency", unit: "ms", digits: 1 }),
    inflight: THChart.make($("c-inflight"), { title: "in flight per provider" }),
  };
  let prev = null;
  function sample(s) {
    const now = Date.now();
    const cur = { t: now, requests: s.requests.total, errors: s.requests.errors, uptime: s.uptime_seconds };
    if (prev && cur.requests >= prev.requests && cur.uptime >= prev.uptime) {
      const dt = (now - prev.t) / 1000;
      if (dt < 0.5) return; // a get_status right after a push: wait for a longer interval
      charts.rps.add("requests/s", now, (cur.requests - prev.requests) / dt);
      charts.errors.add("errors/s", now, (cur.errors - prev.errors) / dt);
    }
    prev = cur; // a restarted hub (totals went down) starts a new baseline
    if (s.latency_ms && s.latency_ms.samples) {
      charts.latency.add("p50", now, s.latency_ms.p50);
      charts.latency.add("p99", now, s.latency_ms.p99);
    }
    for (const [name, p] of Object.entries(s.providers || {})) charts.inflight.add(name, now, p.in_flight);
    for (const c of Object.values(charts)) c.draw(now);
  }
  function log(type, data, ts) {
    const what = type === "provider_breaker" ? data.provider + ": " + data.previous + " → " + data.state
      : type.startsWith("node_") ? data.node_id + " (" + data.status + ")"
      : type === "announcement" ? (data.action === "created" ? data.announcement.message : "removed") : "";
    events.unshift(TH.el("li", {}, (ts || "").slice(11, 19) + "  " + type + "  " + what));
    events.length = Math.min(events.length, 50);
    $("events").replaceChildren(...events);
  }
  TH.json("GET", "/api/status").then(render).catch(() => {});
  const feed = TH.feed((type, data, ts) => {
    if (type === "system_status") { render(data); sample(data); }
    else if (type !== "pong" && type !== "error") {
      log(type, data, ts);
      feed.send({ type: "get_status" }); // show the change at once, not at the next push
    }
  }, (st) => { $("conn").textContent = st; $("conn").className = "pill " + st; });
})();
