// The admin page: every panel reads the admin routes with the key kept in this browser.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const say = (text, bad) => { $("msg").textContent = text; $("msg").className = bad ? "error" : "ok"; };
  $("key").value = TH.key();
  async function providers() {
    const d = await TH.json("GET", "/admin/providers");
    const list = Array.isArray(d.providers) ? d.providers
      : Object.entries(d.providers || d).map(([name, p]) => Object.assign({ name }, p));
    $("providers").replaceChildren(...list.map((p) => TH.el("tr", {}, TH.el("td", {}, p.name),
      TH.el("td", {}, TH.pill(p.health || p.status || "?")), TH.el("td", {}, TH.pill(p.breaker || "?")),
      TH.el("td", {}, p.in_flight), TH.el("td", {}, p.queued), TH.el("td", {}, TH.fmt(p.ewma_first_byte_ms, 1)),
      TH.el("td", {}, TH.fmt(p.error_rate, 3)))));
  }
  async function nodes() {
    const d = await TH.json("GET", "/api/nodes");
    const cmd = (id, c) => async () => {
      try { await TH.json("POST", "/api/nodes/" + encodeURIComponent(id) + "/command", { command: c }); say(id + ": " + c); }
      catch (e) { say(e.message, true); }
      nodes().catch(() => {});
    };
    const del = (id) => async () => {
      try { await TH.json("DELETE", "/api/nodes/" + encodeURIComponent(id)); say(id + " removed"); }
      catch (e) { say(e.message, true); }
      nodes().catch(() => {});
    };
    // the protocol the node speaks (ttshub or seed2, as the registry told it from the registration)
    const protocol = (n) => TH.el("span", {}, n.protocol || "–");
    // the voices the node announced, and the library voices the hub pushed to it (library_voices)
    const cut = (l) => l.length > 6 ? l.slice(0, 6).join(", ") + " … (" + l.length + ")" : l.join(", ");
    const voices = (n) => {
      const own = Array.isArray(n.voices) ? n.voices : [];
      const lib = Array.isArray(n.library_voices) ? n.library_voices : [];
      const parts = [];
      if (own.length) parts.push(TH.el("span", { class: "own", title: own.join(", ") }, cut(own)));
      if (own.length && lib.length) parts.push(TH.el("br", {}));
      if (lib.length) parts.push(TH.el("span", { class: "library", title: "library voices it holds: " + lib.join(", ") },
        "library: " + cut(lib)));
      return TH.el("span", { class: "voices" }, ...(parts.length ? parts : ["–"]));
    };
    $("nodes").replaceChildren(...d.nodes.map((n) => TH.el("tr", { "data-node": n.node_id },
      TH.el("td", {}, n.node_id), TH.el("td", {}, n.engine_type), TH.el("td", { class: "protocol" }, protocol(n)),
      TH.el("td", {}, n.url), TH.el("td", {}, TH.pill(n.status)), TH.el("td", {}, n.in_flight), TH.el("td", {}, n.requests),
      TH.el("td", {}, voices(n)),
      TH.el("td", {}, n.status === "standby"
        ? TH.el("button", { class: "secondary", onclick: cmd(n.node_id, "activate") }, "activate")
        : TH.el("button", { class: "secondary", onclick: cmd(n.node_id, "standby") }, "standby"), " ",
        TH.el("button", { class: "danger", onclick: del(n.node_id) }, "remove")))));
  }
  async function announcements() {
    const d = await TH.json("GET", "/api/announcements");
    $("ann").replaceChildren(...d.announcements.map((a) => TH.el("li", { "data-id": a.id },
      TH.pill(a.level), " ", a.message, " ",
      TH.el("button", { class: "secondary", onclick: async () => {
        try { await TH.json("DELETE", "/api/announcements/" + a.id); } catch (e) { say(e.message, true); }
        announcements().catch(() => {});
      } }, "delete"))));
  }
  async function usage() {
    const d = await TH.json("GET", "/admin/usage?window=" + $("window").value);
    $("usage").replaceChildren(...d.usage.map((u) => TH.el("tr", {}, TH.el("td", {}, u.tenant),
      TH.el("td", {}, u.characters), TH.el("td", {}, u.requests))));
  }
  async function config() {
    $("config").textContent = JSON.stringify(await TH.json("GET", "/admin/config"), null, 2);
  }
  async function all() {
    try {
      await Promise.all([providers(), nodes(), announcements(), usage(), config()]);
      $("protected").hidden = true;
      say("loaded");
    } catch (e) {
      if (e.code === "protected_mode") {
        // the hub is public with no keys: say so, and how to open it, instead of empty panels
        $("protected").hidden = false;
        $("protected").textContent = e.message + " (The cluster token also works in the key field above.)";
        say("protected mode: the admin routes are closed", true);
      } else {
        say(e.status === 401 || e.status === 403 ? "this needs an admin key: " + e.message : e.message, true);
      }
    }
  }
  $("save").addEventListener("click", () => { TH.setKey($("key").value.trim()); all(); });
  $("window").addEventListener("change", () => usage().catch((e) => say(e.message, true)));
  $("annform").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      await TH.json("POST", "/api/announcements", { message: $("annmsg").value, level: $("annlevel").value });
      $("annmsg").value = "";
      say("announced");
    } catch (e) { say(e.message, true); }
    announcements().catch(() => {});
  });
  all();
  setInterval(() => { providers().catch(() => {}); nodes().catch(() => {}); }, 5000);
})();
