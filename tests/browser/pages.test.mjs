// The web pages in Debian's Chromium (headless), driven by playwright-core, against the real ttshub binary.
// Run: TTSHUB_BIN=build/ttshub node --test tests/browser/
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, writeFileSync, readFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const BIN = process.env.TTSHUB_BIN || path.join(ROOT, "build", "ttshub");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const ADMIN_KEY = "adm-" + "e".repeat(28);
const USER_KEY = "usr-" + "f".repeat(28);
const sha = (s) => createHash("sha256").update(s).digest("hex");

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, "127.0.0.1", () => { const p = s.address().port; s.close(() => resolve(p)); });
    s.on("error", reject);
  });
}

async function startHub(config, fixedPort, listenHost) {
  const dir = mkdtempSync(path.join(os.tmpdir(), "ttshub-browser-"));
  const port = fixedPort || await freePort();
  const args = ["serve", "--listen", `${listenHost || "127.0.0.1"}:${port}`];
  if (config) {
    writeFileSync(path.join(dir, "ttshub.yaml"), `data_dir: "${dir}/data"\n` + config);
    args.push("-c", path.join(dir, "ttshub.yaml"));
  }
  const log = path.join(dir, "hub.log");
  const out = (await import("node:fs")).openSync(log, "w");
  const proc = spawn(BIN, args, { stdio: ["ignore", out, out], cwd: dir });
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 30000;
  for (;;) {
    try {
      const r = await fetch(url + "/health");
      if (r.status === 200 || r.status === 503) break;
    } catch (e) { /* not up yet */ }
    if (Date.now() > deadline || proc.exitCode !== null) throw new Error("ttshub did not start:\n" + readFileSync(log, "utf8"));
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    url, proc, log,
    async stop() {
      if (proc.exitCode !== null) return proc.exitCode;
      proc.kill("SIGTERM");
      const code = await new Promise((r) => proc.on("exit", (c) => r(c)));
      const text = readFileSync(log, "utf8");
      for (const mark of ["ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"])
        assert.ok(!text.includes(mark), "sanitizer report:\n" + text.slice(-4000));
      assert.equal(code, 0, "ttshub exited with " + code + ":\n" + text.slice(-2000));
      return code;
    },
  };
}

let browser;
before(async () => {
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
  });
});
after(async () => { await browser?.close(); });

// A page that fails the test on any console error or uncaught exception (a CSP violation is one).
async function openPage(url) {
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  const problems = [];
  page.on("console", (m) => { if (m.type() === "error") problems.push(m.text()); });
  page.on("pageerror", (e) => problems.push(String(e)));
  await page.goto(url);
  return { page, ctx, problems };
}

test("status page shows the hub and follows the live feed", async () => {
  const hub = await startHub("registry: { heartbeat_interval: 1s, dead_threshold: 2s, remove_after: 3s }\n");
  try {
    const { page, ctx, problems } = await openPage(hub.url + "/status");
    await page.waitForSelector("#conn.connected");
    await page.waitForFunction(() => document.querySelector("#health").textContent === "healthy");
    assert.equal(await page.textContent("tr[data-provider=local] td:nth-child(2)"), "espeak");
    assert.equal(await page.textContent("tr[data-provider=local] .pill"), "closed");
    // traffic shows up
    for (let i = 0; i < 2; i++) {
      const r = await fetch(hub.url + "/api/generate", { method: "POST", body: new URLSearchParams({ input: "count me " + i, voice: "alloy" }) });
      assert.equal(r.status, 200);
      await r.arrayBuffer();
    }
    await page.waitForFunction(() => Number(document.querySelector("#s-requests").textContent) >= 2, null, { timeout: 10000 });
    await page.waitForFunction(() => document.querySelector("#s-p50").textContent !== "–", null, { timeout: 10000 });
    // an announcement is pushed and shown as a banner
    let r = await fetch(hub.url + "/api/announcements", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ message: "Maintenance tonight", level: "warning" }) });
    assert.equal(r.status, 201);
    await page.waitForSelector(".banner.warning >> text=Maintenance tonight", { timeout: 5000 });
    // a node registering shows in the event list
    r = await fetch(hub.url + "/api/nodes/register", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ node_id: "gpu-1", engine_type: "xtts", url: "http://127.0.0.1:9", capacity: 2 }) });
    assert.equal(r.status, 200);
    await page.waitForSelector("#events li >> text=node_online  gpu-1", { timeout: 5000 });
    await page.waitForFunction(() => document.querySelector("#s-nodes").textContent === "1 / 1", null, { timeout: 5000 });
    assert.deepEqual(problems, []);
    await ctx.close();
  } finally {
    await hub.stop();
  }
});

test("status page reconnects to a restarted hub", async () => {
  let hub = await startHub();
  const port = Number(new URL(hub.url).port);
  try {
    const { page, ctx, problems } = await openPage(hub.url + "/status");
    await page.waitForSelector("#conn.connected");
    await hub.stop();
    await page.waitForSelector("#conn.disconnected, #conn.connecting", { timeout: 10000 });
    hub = await startHub(null, port);
    await page.waitForSelector("#conn.connected", { timeout: 20000 });
    await page.waitForFunction(() => document.querySelector("#health").textContent === "healthy");
    // the failed reconnection attempts are the only console noise allowed
    assert.deepEqual(problems.filter((p) => !/WebSocket/.test(p)), []);
    await ctx.close();
  } finally {
    await hub.stop();
  }
});

test("playground speaks and plays the result", async () => {
  const hub = await startHub();
  try {
    const { page, ctx, problems } = await openPage(hub.url + "/playground");
    await page.fill("#text", "The playground works in a real browser.");
    await page.selectOption("#format", "wav");
    await page.click("#go");
    await page.waitForSelector("#state.ok", { timeout: 20000 });
    const info = await page.textContent("#info");
    assert.match(info, /^\d+ bytes of audio\/wav from local/);
    // the browser decoded it: the audio element knows its duration
    const duration = await page.evaluate(() => new Promise((resolve) => {
      const a = document.querySelector("#audio");
      if (a.readyState >= 1) resolve(a.duration);
      a.addEventListener("loadedmetadata", () => resolve(a.duration));
      a.addEventListener("error", () => resolve(-1));
    }));
    assert.ok(duration > 1 && duration < 10, "duration " + duration);
    // (the page may not fetch() its blob: URL back: the CSP's connect-src is 'self' only)
    assert.match(await page.textContent("#info"), /audio\/wav/);
    assert.match(await page.getAttribute("#download", "href"), /^blob:/);
    // mp3 too
    await page.selectOption("#format", "mp3");
    await page.fill("#text", "And now in mp3.");
    await page.click("#go");
    await page.waitForFunction(() => /audio\/mpeg/.test(document.querySelector("#info").textContent), null, { timeout: 20000 });
    // a bad request shows the hub's own message (past the form's own check)
    await page.$eval("#speed", (e) => { e.removeAttribute("max"); e.value = "9"; });
    await page.click("#go");
    await page.waitForSelector("#state.error", { timeout: 10000 });
    assert.match(await page.textContent("#state"), /speed/);
    assert.deepEqual(problems.filter((p) => !/status of 400/.test(p)), []);
    await ctx.close();
  } finally {
    await hub.stop();
  }
});

test("admin page of a public hub with no keys says it is in protected mode, and how to open it", async () => {
  const hub = await startHub(null, null, "0.0.0.0");
  try {
    const { page, ctx, problems } = await openPage(hub.url + "/admin");
    await page.waitForSelector("#protected:not([hidden])");
    const text = await page.textContent("#protected");
    assert.match(text, /protected mode/);
    assert.match(text, /auth\.allow_open_admin/);
    assert.match(text, /registry\.token_env/);
    assert.match(await page.textContent("#msg"), /protected mode/);
    await ctx.close();
    assert.deepEqual(problems.filter((p) => !/status of 403/.test(p)), []);
  } finally {
    await hub.stop();
  }
});

test("admin page needs an admin key, then manages announcements and nodes", async () => {
  // a stand-in worker node that takes commands
  const commands = [];
  const node = http.createServer((req, res) => {
    let body = "";
    req.on("data", (d) => { body += d; });
    req.on("end", () => {
      if (req.url === "/command") commands.push(JSON.parse(body).command);
      res.writeHead(200, { "Content-Type": "application/json" });
      res.end(JSON.stringify({ success: true }));
    });
  });
  await new Promise((r) => node.listen(0, "127.0.0.1", r));
  const nodeUrl = `http://127.0.0.1:${node.address().port}`;
  const hub = await startHub(
    "auth:\n  mode: api_key\n  keys:\n" +
    `    - { id: a, sha256: "${sha(ADMIN_KEY)}", role: admin }\n` +
    `    - { id: u, sha256: "${sha(USER_KEY)}", role: user }\n`);
  try {
    const r = await fetch(hub.url + "/api/nodes/register", { method: "POST",
      headers: { "Content-Type": "application/json", Authorization: "Bearer " + ADMIN_KEY },
      body: JSON.stringify({ node_id: "box-1", engine_type: "xtts", url: nodeUrl, capacity: 2 }) });
    assert.equal(r.status, 200);
    const { page, ctx, problems } = await openPage(hub.url + "/admin");
    await page.waitForSelector("#msg.error");
    assert.match(await page.textContent("#msg"), /admin key/);
    await page.fill("#key", USER_KEY);
    await page.click("#save");
    await page.waitForFunction(() => /admin/.test(document.querySelector("#msg").textContent));
    assert.match(await page.textContent("#msg"), /admin/);
    await page.fill("#key", ADMIN_KEY);
    await page.click("#save");
    await page.waitForSelector("#msg.ok");
    await page.waitForSelector("#providers >> text=local");
    assert.match(await page.textContent("#config"), /"providers"/);
    // announcements
    await page.fill("#annmsg", "Hello from the admin page");
    await page.selectOption("#annlevel", "critical");
    await page.click("#annform button");
    await page.waitForSelector("#ann li >> text=Hello from the admin page");
    const list = await (await fetch(hub.url + "/api/announcements")).json();
    assert.equal(list.count, 1);
    assert.equal(list.announcements[0].level, "critical");
    await page.click("#ann li button");
    await page.waitForFunction(() => document.querySelectorAll("#ann li").length === 0);
    // nodes: standby goes to the node and shows, then remove
    await page.waitForSelector("tr[data-node=box-1] >> text=online");
    await page.click("tr[data-node=box-1] >> text=standby");
    await page.waitForSelector("tr[data-node=box-1] .pill.standby");
    assert.deepEqual(commands, ["standby"]);
    await page.click("tr[data-node=box-1] >> text=remove");
    await page.waitForFunction(() => !document.querySelector("tr[data-node=box-1]"));
    assert.deepEqual(problems.filter((p) => !/status of 40[13]/.test(p)), []);
    await ctx.close();
  } finally {
    await hub.stop();
    node.close();
  }
});
