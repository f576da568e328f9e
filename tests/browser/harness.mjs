// Shared harness of the browser tests: the real ttshub binary on a free port, engine fakes from
// tests/e2e/fakes as subprocesses, and pages that fail the test on any console error (a CSP violation is one).
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync, readFileSync, openSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const BIN = process.env.TTSHUB_BIN || path.join(ROOT, "build", "ttshub");
export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
export const BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, "127.0.0.1", () => { const p = s.address().port; s.close(() => resolve(p)); });
    s.on("error", reject);
  });
}

export const tmpDir = () => mkdtempSync(path.join(os.tmpdir(), "ttshub-browser-"));

// Poll fn until it returns a truthy value, or fail after ms.
export async function until(fn, ms, what) {
  const deadline = Date.now() + (ms || 10000);
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error("timed out waiting for " + (what || "a condition"));
    await new Promise((r) => setTimeout(r, 50));
  }
}

export async function startHub(config, fixedPort, listenHost) {
  const dir = tmpDir();
  const port = fixedPort || await freePort();
  const args = ["serve", "--listen", `${listenHost || "127.0.0.1"}:${port}`];
  if (config) {
    writeFileSync(path.join(dir, "ttshub.yaml"), `data_dir: "${dir}/data"\n` + config);
    args.push("-c", path.join(dir, "ttshub.yaml"));
  }
  const log = path.join(dir, "hub.log");
  const out = openSync(log, "w");
  const proc = spawn(BIN, args, { stdio: ["ignore", out, out], cwd: dir });
  const url = `http://127.0.0.1:${port}`;
  await until(async () => {
    if (proc.exitCode !== null) throw new Error("ttshub did not start:\n" + readFileSync(log, "utf8"));
    try {
      const r = await fetch(url + "/health");
      return r.status === 200 || r.status === 503;
    } catch (e) { return false; }
  }, 30000, "ttshub to start");
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

// One fake engine of tests/e2e/fakes/engines.py (its CLI prints READY <port>).
export async function startFake(kind, options, extraArgs) {
  const args = ["-m", "fakes.engines", "--kind", kind, "--port", "0", ...(extraArgs || [])];
  for (const [k, v] of Object.entries(options || {})) args.push("--option", k + "=" + JSON.stringify(v));
  const proc = spawn("/usr/bin/python3", args, { cwd: path.join(ROOT, "tests", "e2e"), stdio: ["ignore", "pipe", "pipe"] });
  let out = "", err = "";
  proc.stdout.on("data", (d) => { out += d; });
  proc.stderr.on("data", (d) => { err += d; });
  const port = await until(() => {
    if (proc.exitCode !== null) throw new Error("fake " + kind + " exited:\n" + err);
    const m = /READY (\d+)/.exec(out);
    return m && Number(m[1]);
  }, 20000, "the " + kind + " fake");
  const url = `http://127.0.0.1:${port}`;
  return {
    url, proc,
    async stats() { return (await fetch(url + "/__fake/stats")).json(); },
    async stop() {
      if (proc.exitCode !== null) return;
      proc.kill("SIGTERM");
      await new Promise((r) => proc.on("exit", r));
    },
  };
}

export async function openPage(browser, url, ctxOptions) {
  const ctx = await browser.newContext(ctxOptions);
  const page = await ctx.newPage();
  const problems = [];
  page.on("console", (m) => { if (m.type() === "error") problems.push(m.text()); });
  page.on("pageerror", (e) => problems.push(String(e)));
  await page.goto(url);
  return { page, ctx, problems };
}
