// The voices page, the playground with a library voice and the status page's live charts in Debian's
// Chromium (headless, fake microphone fed with speech espeak-ng makes at test time), against the real
// binary and a fake CosyVoice (tests/e2e/fakes) that speaks library voices.
// Run: TTSHUB_BIN=build/ttshub node --test tests/browser/
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";
import { BROWSER_ARGS, CHROMIUM, openPage, startFake, startHub, tmpDir, until } from "./harness.mjs";

const SPEECH = "This is my voice. I am reading a few sentences slowly, so that the hub has enough of it to keep.";
const IDS = ["rec_voice", "file_voice"];
let browser, wav;
before(async () => {
  // the microphone hears real speech (Chromium loops the file)
  wav = path.join(tmpDir(), "speech.wav");
  execFileSync("espeak-ng", ["-v", "en-us", "-s", "140", "-w", wav, SPEECH]);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [...BROWSER_ARGS, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
      "--use-file-for-fake-audio-capture=" + wav, "--autoplay-policy=no-user-gesture-required"],
  });
});
after(async () => { await browser?.close(); });

const hubConfig = (cosyUrl) =>
  "rate_limit: { global_rpm: 0, ip_rpm: 0, concurrency: 0 }\n" +
  "providers:\n  - { name: local, type: espeak }\n" +
  `  - { name: cosy, type: cosyvoice, base_url: "${cosyUrl}" }\n`;

// the audio element's duration once the browser has decoded its metadata (-1 on a decode error)
const mediaDuration = (page, sel) => page.$eval(sel, (a) => new Promise((resolve) => {
  if (a.readyState >= 1 && a.duration) resolve(a.duration);
  a.addEventListener("loadedmetadata", () => resolve(a.duration), { once: true });
  a.addEventListener("error", () => resolve(-1), { once: true });
}));

test("voices page records from the microphone, uploads a file, plays, renames; the playground speaks it; delete", async () => {
  const cosy = await startFake("cosyvoice", { speakers: ["英文女", ...IDS] });
  const hub = await startHub(hubConfig(cosy.url));
  try {
    const { page, ctx, problems } = await openPage(browser, hub.url + "/voices");
    await page.waitForFunction(() => document.querySelector("#count").textContent === "0");

    // record: MediaRecorder from the (fake) microphone, straight to /api/extract_voice
    await page.fill("#vname", "Recorded");
    await page.fill("#vid", "rec_voice");
    await page.fill("#vlang", "en");
    await page.click("#rec");
    await page.waitForFunction(() => Number(document.querySelector("#elapsed").dataset.seconds) >= 3.5, null,
      { timeout: 20000 });
    await page.click("#stop");
    await page.waitForSelector("#state.ok", { timeout: 20000 });
    assert.match(await page.textContent("#state"), /^made rec_voice/);
    await page.waitForSelector("tr[data-voice=rec_voice]");
    let v = (await (await fetch(hub.url + "/api/voices/rec_voice")).json()).voice;
    assert.equal(v.name, "Recorded");
    assert.equal(v.language, "en");
    assert.ok(v.duration_seconds >= 3 && v.duration_seconds < 15, "recorded " + v.duration_seconds + " s");

    // upload a file
    await page.fill("#vname", "Uploaded");
    await page.fill("#vid", "file_voice");
    await page.fill("#vengine", "cosyvoice");
    await page.fill("#vtext", SPEECH);
    await page.setInputFiles("#file", wav);
    await page.click("#upload");
    await page.waitForSelector("tr[data-voice=file_voice]", { timeout: 20000 });
    await page.waitForFunction(() => document.querySelector("#count").textContent === "2");
    const row = "tr[data-voice=file_voice]";
    assert.equal(await page.textContent(row + " td:nth-child(3)"), "cosyvoice");
    v = (await (await fetch(hub.url + "/api/voices/file_voice")).json()).voice;
    assert.equal(await page.textContent(row + " td.dur"), v.duration_seconds.toFixed(1) + " s");
    assert.equal(v.reference_text, SPEECH);

    // play the reference: fetched with the key, played from an object URL
    await page.click(row + " button.play");
    await page.waitForFunction(() => document.querySelector("#player").dataset.voice === "file_voice");
    const d = await mediaDuration(page, "#player");
    assert.ok(Math.abs(d - v.duration_seconds) < 0.1, "played " + d + " s of " + v.duration_seconds);
    assert.match(await page.getAttribute("#player", "src"), /^blob:/);

    // rename
    await page.fill(row + " td:first-child input", "Renamed voice");
    await page.click(row + " button.rename");
    await page.waitForFunction(() => /renamed file_voice/.test(document.querySelector("#state").textContent));
    v = (await (await fetch(hub.url + "/api/voices/file_voice")).json()).voice;
    assert.equal(v.name, "Renamed voice");

    // the playground lists the library voices and speaks with one (through the clone-capable fake)
    const pg = await ctx.newPage();
    pg.on("console", (m) => { if (m.type() === "error") problems.push(m.text()); });
    pg.on("pageerror", (e) => problems.push(String(e)));
    await pg.goto(hub.url + "/playground");
    await pg.waitForSelector("#voice optgroup option[value='library:file_voice']", { state: "attached" });
    assert.match(await pg.textContent("#voice option[value='library:rec_voice']"), /Recorded/);
    const before = (await cosy.stats()).calls;
    for (const id of IDS) {
      await pg.selectOption("#voice", "library:" + id);
      await pg.selectOption("#format", "wav");
      await pg.fill("#text", "Spoken with " + id + ".");
      await pg.$eval("#info", (e) => { e.textContent = ""; });
      await pg.click("#go");
      await pg.waitForFunction(() => /from cosy/.test(document.querySelector("#info").textContent), null,
        { timeout: 20000 });
      assert.match(await pg.textContent("#info"), /audio\/wav from cosy/);
      assert.ok(await mediaDuration(pg, "#audio") > 0.3);
    }
    assert.ok((await cosy.stats()).calls >= before + 2);
    await pg.close();

    // delete (after the confirmation)
    page.on("dialog", (dlg) => dlg.accept());
    await page.click(row + " button.delete");
    await page.waitForFunction(() => !document.querySelector("tr[data-voice=file_voice]"));
    assert.equal((await fetch(hub.url + "/api/voices/file_voice")).status, 404);
    await page.waitForFunction(() => document.querySelector("#count").textContent === "1");
    // a bad upload shows the hub's own message
    await page.fill("#vid", "../nope");
    await page.setInputFiles("#file", wav);
    await page.click("#upload");
    await page.waitForSelector("#state.error");
    assert.match(await page.textContent("#state"), /voice_id|voice id/);
    assert.deepEqual(problems.filter((p) => !/status of 400/.test(p)), []);
    await ctx.close();
  } finally {
    await hub.stop();
    await cosy.stop();
  }
});

test("status charts draw points as requests arrive", async () => {
  const hub = await startHub("rate_limit: { global_rpm: 0, ip_rpm: 0, concurrency: 0 }\n");
  try {
    const { page, ctx, problems } = await openPage(browser, hub.url + "/status");
    await page.waitForSelector("#conn.connected");
    const chart = (id, attr) => page.$eval("#" + id + " svg", (s, a) => Number(s.getAttribute(a) || 0), attr);
    const line = (id, name) => page.$eval("#" + id + " svg",
      (s, n) => { const p = s.querySelector(`polyline[data-series="${n}"]`); return p ? Number(p.dataset.last) : null; }, name);
    // idle: a first rate point of 0 (the page's own loads are behind it), no latency yet, a series per provider
    await page.waitForFunction(() => {
      const p = document.querySelector("#c-rps polyline");
      return p && Number(p.dataset.last) === 0;
    }, null, { timeout: 15000 });
    assert.equal(await chart("c-latency", "data-points"), 0);
    assert.equal(await line("c-errors", "errors/s"), 0);
    assert.equal(await line("c-inflight", "local"), 0);
    const idlePoints = await chart("c-rps", "data-points");

    // traffic: syntheses and some bad requests until the next pushes show them
    let i = 0;
    await until(async () => {
      const r = await fetch(hub.url + "/api/generate", { method: "POST",
        body: new URLSearchParams({ input: "chart point " + i++, voice: "alloy", response_format: "wav" }) });
      assert.equal(r.status, 200);
      await r.arrayBuffer();
      const bad = await fetch(hub.url + "/api/generate", { method: "POST", body: new URLSearchParams({ voice: "alloy" }) });
      assert.equal(bad.status, 400);
      await bad.arrayBuffer();
      return (await line("c-rps", "requests/s")) > 0 && (await line("c-errors", "errors/s")) > 0 &&
        (await line("c-latency", "p99")) > 0;
    }, 30000, "the charts to show the traffic");
    assert.ok(await chart("c-rps", "data-points") > idlePoints);
    assert.ok((await line("c-latency", "p50")) > 0);
    assert.ok((await line("c-latency", "p99")) >= (await line("c-latency", "p50")));
    assert.ok(await chart("c-rps", "data-max") > 0);
    // the polyline is drawn above the baseline, and the legend says the rate
    const ys = await page.$eval("#c-rps polyline", (p) => p.getAttribute("points").split(" ").map((xy) => Number(xy.split(",")[1])));
    assert.ok(Math.min(...ys) < Math.max(...ys), "a flat line: " + ys);
    assert.match(await page.textContent("#c-rps .legend"), /requests\/s \d/);
    // more points keep coming with the pushes
    const n = await chart("c-rps", "data-points");
    await page.waitForFunction((k) => Number(document.querySelector("#c-rps svg").getAttribute("data-points")) > k, n,
      { timeout: 10000 });
    assert.deepEqual(problems, []);
    await ctx.close();
  } finally {
    await hub.stop();
  }
});

test("status chart shows a provider's requests in flight; admin page shows node protocol and voices", async () => {
  // a slow clone-capable engine: each synthesis takes 4 s, so pushes see it in flight
  const cosy = await startFake("cosyvoice", { speakers: ["slow_voice"] }, ["--latency", "4"]);
  const hub = await startHub(hubConfig(cosy.url));
  try {
    const fd = new FormData();
    fd.append("audio", new Blob([readFileSync(wav)], { type: "audio/wav" }), "speech.wav");
    fd.append("voice_id", "slow_voice");
    assert.equal((await fetch(hub.url + "/api/extract_voice", { method: "POST", body: fd })).status, 201);
    const { page, ctx, problems } = await openPage(browser, hub.url + "/status");
    await page.waitForSelector("#c-inflight polyline[data-series=cosy]", { state: "attached" });
    assert.equal(await page.getAttribute("#c-inflight polyline[data-series=cosy]", "data-last"), "0");
    const speak = () => fetch(hub.url + "/api/synthesize", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ text: "Slowly now.", voice_id: "slow_voice", output_format: "wav" }) })
      .then(async (r) => { await r.arrayBuffer(); return r.status; });
    const pending = [speak(), speak()];
    await page.waitForFunction(() =>
      Number(document.querySelector("#c-inflight polyline[data-series=cosy]").dataset.last) >= 1, null, { timeout: 15000 });
    assert.equal(await page.getAttribute("#c-inflight polyline[data-series=local]", "data-last"), "0");
    assert.deepEqual(await Promise.all(pending), [200, 200]);
    // and back to 0 once they are done
    await page.waitForFunction(() =>
      document.querySelector("#c-inflight polyline[data-series=cosy]").dataset.last === "0", null, { timeout: 15000 });
    assert.deepEqual(problems, []);

    // the admin page: a node's protocol (as the registry says: a url registration speaks ttshub) and voices
    const r = await fetch(hub.url + "/api/nodes/register", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ node_id: "gpu-7", engine_type: "xtts", url: "http://127.0.0.1:9", capacity: 1,
        voices: ["anna", "ben"] }) });
    assert.equal(r.status, 200);
    // and a seed-2 worker, registered in its NodeInfo shape (host and port, no url)
    const s2 = await fetch(hub.url + "/api/nodes/register", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ node_id: "xtts-5e2", engine_type: "xtts", host: "127.0.0.1", port: 9, status: "standby",
        model_loaded: false, registered_at: 1765000000.5, last_heartbeat: 1765000000.5 }) });
    assert.equal(s2.status, 200);
    await page.goto(hub.url + "/admin");
    await page.waitForSelector("tr[data-node=gpu-7]");
    await page.waitForSelector("tr[data-node=xtts-5e2]");
    assert.equal(await page.textContent("tr[data-node=xtts-5e2] td.protocol"), "seed2");
    assert.equal(await page.textContent("tr[data-node=xtts-5e2] .voices"), "–");
    assert.equal(await page.textContent("tr[data-node=gpu-7] td.protocol"), "ttshub");
    assert.equal(await page.textContent("tr[data-node=gpu-7] .voices"), "anna, ben");
    assert.deepEqual(problems, []);
    await ctx.close();
  } finally {
    await hub.stop();
    await cosy.stop();
  }
});

test("voices page on a hub with keys: asks for one, keeps it in the browser, plays the reference with it", async () => {
  const sha = (s) => createHash("sha256").update(s).digest("hex");
  const ADMIN_KEY = "adm-" + "a".repeat(28), USER_KEY = "usr-" + "b".repeat(28);
  const hub = await startHub("auth:\n  mode: api_key\n  keys:\n" +
    `    - { id: a, sha256: "${sha(ADMIN_KEY)}", role: admin }\n` +
    `    - { id: u, sha256: "${sha(USER_KEY)}", role: user, tenant: team-u }\n`);
  try {
    const { page, ctx, problems } = await openPage(browser, hub.url + "/voices");
    await page.waitForSelector("#msg.error");
    assert.match(await page.textContent("#msg"), /API key/);
    await page.fill("#key", USER_KEY);
    await page.click("#save");
    await page.waitForFunction(() => document.querySelector("#count").textContent === "0");
    await page.fill("#vid", "keyed_voice");
    await page.setInputFiles("#file", wav);
    await page.click("#upload");
    await page.waitForSelector("tr[data-voice=keyed_voice]", { timeout: 20000 });
    const owner = await page.textContent("tr[data-voice=keyed_voice] td.owner");
    assert.ok(owner.length > 0);
    // the reference needs the key: the page sends it, a bare request is refused
    assert.equal((await fetch(hub.url + "/api/voices/keyed_voice/audio")).status, 401);
    await page.click("tr[data-voice=keyed_voice] button.play");
    assert.ok(await mediaDuration(page, "#player") > 3);
    // the key stays in this browser: a reload lists the voice again at once
    await page.reload();
    await page.waitForSelector("tr[data-voice=keyed_voice]");
    assert.equal(await page.inputValue("#key"), USER_KEY);
    assert.deepEqual(problems.filter((p) => !/status of 401/.test(p)), []);
    await ctx.close();
  } finally {
    await hub.stop();
  }
});
