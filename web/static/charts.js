// A small SVG line-chart renderer for the status page (no library, nothing inline: fits the pages' CSP).
// THChart.make(container, {title, unit, digits}) -> {add(name, t_ms, value), draw(now_ms)}; every series
// keeps the points of the last WINDOW_MS and is drawn as a polyline on a shared time axis.
"use strict";
const THChart = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const WINDOW_MS = 15 * 60 * 1000;
  const W = 600, H = 170, L = 46, R = 8, T = 10, B = 22;
  const COLORS = ["#2456c9", "#c0392b", "#1f8a4c", "#b86e00", "#7d3cc9", "#0f8a8a", "#6b6b70", "#d1467a"];
  const svg = (tag, attrs, text) => {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  };
  // a round upper bound for the y axis: 1, 2, 5 x 10^n
  const nice = (v) => {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  };
  function make(container, opt) {
    const series = new Map(); // name -> [[t, v], ...]
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": opt.title });
    const legend = document.createElement("div");
    legend.className = "legend";
    container.replaceChildren(root, legend);
    function add(name, t, v) {
      if (!Number.isFinite(v)) return;
      if (!series.has(name)) series.set(name, []);
      series.get(name).push([t, v]);
    }
    function draw(now) {
      const from = now - WINDOW_MS;
      let max = 0, n = 0;
      for (const pts of series.values()) {
        while (pts.length && pts[0][0] < from) pts.shift();
        for (const p of pts) { max = Math.max(max, p[1]); n++; }
      }
      const top = nice(max);
      const x = (t) => L + (W - L - R) * (t - from) / WINDOW_MS;
      const y = (v) => T + (H - T - B) * (1 - v / top);
      const kids = [];
      for (const f of [0, 0.5, 1]) {
        const v = top * f;
        kids.push(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }));
        kids.push(svg("text", { x: L - 4, y: y(v) + 4, "text-anchor": "end", class: "tick" },
          Number(v.toFixed(top < 2 ? 2 : top < 20 ? 1 : 0)).toLocaleString()));
      }
      for (const [m, label] of [[15, "−15 min"], [10, "−10"], [5, "−5"], [0, "now"]])
        kids.push(svg("text", { x: x(now - m * 60000), y: H - 6, "text-anchor": m === 15 ? "start" : m ? "middle" : "end",
          class: "tick" }, label));
      let i = 0;
      const keys = [];
      for (const [name, pts] of series) {
        const color = COLORS[i++ % COLORS.length];
        if (pts.length) {
          const line = svg("polyline", { points: pts.map((p) => x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1)).join(" "),
            fill: "none", stroke: color, "stroke-width": 1.8, "stroke-linejoin": "round", "data-series": name,
            "data-points": pts.length, "data-last": pts[pts.length - 1][1] });
          kids.push(line);
          const last = pts[pts.length - 1];
          kids.push(svg("circle", { cx: x(last[0]).toFixed(1), cy: y(last[1]).toFixed(1), r: 2.5, fill: color }));
        }
        const key = document.createElement("span");
        const dot = document.createElement("i");
        dot.style.background = color; // CSSOM, not an inline style attribute: allowed by the CSP
        const last = pts.length ? pts[pts.length - 1][1] : undefined;
        key.append(dot, name + " " + (last === undefined ? "–" : Number(last.toFixed(opt.digits || 0)).toLocaleString()) +
          (opt.unit ? " " + opt.unit : ""));
        keys.push(key);
      }
      root.replaceChildren(...kids);
      root.setAttribute("data-points", n);
      root.setAttribute("data-max", max);
      legend.replaceChildren(...keys);
    }
    return { add, draw, series };
  }
  return { make, WINDOW_MS };
})();
