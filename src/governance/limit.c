/* limit: rate limits and concurrency slots, in memory or shared through Redis.
 *
 * Local backend
 *  - Sliding-window RPM is an exact log: a ring of the timestamps (ms) of the hits of the last 60 s, one
 *    ring per limited thing (global, each IP, tenant, key). A hit at t counts while now < t + 60 s. A
 *    request is refused when the ring already holds `limit` hits; reset/retry-after is the time until the
 *    oldest hit leaves (rounded up to whole seconds, at least 1). Rings grow on demand up to the limit, so
 *    memory follows the real traffic rather than the configured number.
 *  - Token bucket per tenant: `rate` tokens/s up to `burst` (burst 0 = rate); starts full; one token per
 *    request.
 *  - Concurrency: a global counter and one per tenant; th_limit_slot remembers what it incremented and is
 *    freed by th_limit_release, so nothing is decremented twice.
 *  - Check all, then charge: phase 1 only reads (no entry is created), phase 2 creates entries and
 *    reserves ring space (the only steps that can fail, before anything is charged), phase 3 charges.
 *  - Per-IP, tenant and key entries live in bounded hash tables (65,536 entries each) with an LRU list:
 *    entries untouched for more than 2 minutes are dropped (a few per check, all of them in
 *    th_limiter_sweep), and the least recently used entry is evicted when a table is full. A tenant entry
 *    that holds slots, or whose bucket is not yet full again, is never dropped.
 *  - now_ms is clamped so it never goes backwards within one limiter.
 *
 * Redis backend
 *  - One Lua script (CHECK_LUA below) does every RPM and bucket check and the concurrency ceilings, then
 *    charges, atomically. now_ms comes from the caller (hubs keep their clocks in sync with NTP; tests can
 *    drive time) rather than from the server's TIME.
 *  - Windows: a LIST per limit of the hit times (ms) in arrival order ("rl:w:..." keys). The expired head
 *    is trimmed (LRANGE + LTRIM), LLEN counts, RPUSH charges, PEXPIRE 61 s. A list costs Redis a tenth of
 *    the memory and CPU of a sorted set with a member per hit (the first version's "rl:g"-style keys, which
 *    a rolling upgrade leaves to expire). Hubs keep their clocks in sync (NTP): with clocks apart by d, a
 *    hit leaves the window up to d early or late, as with any timestamped log, and a head that is not yet
 *    expired keeps later expired hits counted until it goes (never fewer than the exact count).
 *  - Bucket: a HASH {tokens, ts}, refilled from the elapsed time, PEXPIRE the time to refill + 1 s (an
 *    absent bucket is a full one).
 *  - Concurrency: a HASH per limit ("rl:h:..." keys) with, for each hub, the number of slots it holds
 *    ("<hub id>" -> n) and when the last of them expires ("<hub id>:e" -> now + slot TTL of its latest
 *    acquire). A check reads the hash once (HGETALL: two fields per hub), sums the hubs that have not
 *    expired and drops those that have; acquire is HINCRBY + HSET of the expiry + PEXPIRE, release an
 *    HINCRBY of -1 (the fields go at 0). The slot TTL is limits.request_timeout + 60 s (10 min when there
 *    is no request timeout): a request cannot legitimately hold a slot longer, so when a hub's latest
 *    acquire is older than that, every slot it still counts is a leak (a hub that crashed leaks its slots
 *    for at most that long). This costs Redis the same whatever the number of requests in flight, where a
 *    sorted set of holders (the first version's "rl:cg"-style keys) cost an insert per request into a list
 *    of them all.
 *  - When Redis is down or times out (or the script fails): on_backend_error closed -> refused, 503,
 *    "backend_unavailable", retry-after 1; open -> this hub's local limiter decides for that request and
 *    the result is marked degraded. Each hub still protects itself, but the cluster-wide limits become
 *    per-hub limits while Redis is away. A command that timed out may still have been charged in Redis.
 *    Releasing a Redis slot while Redis is down does nothing: the holder expires with its TTL. */
#include "governance/limit.h"

#include <hiredis/read.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "core/buf.h"
#include "core/list.h"
#include "core/str.h"

#define LIM_WINDOW_MS 60000
#define LIM_IDLE_MS 120000
#define LIM_TABLE_MAX 65536
#define LIM_EXPIRE_STEPS 4 /* idle entries dropped per check */
#define LIM_SLOT_TTL_DEFAULT_MS 600000
#define LIM_SLOT_TTL_EXTRA_MS 60000

enum { L_GLOBAL = 1, L_IP, L_TENANT, L_RATE, L_KEY, L_CONC, L_TCONC, L_N = L_TCONC };

static const char *const lim_reason[L_N + 1] = {
    NULL, "global_rpm", "ip_rpm", "tenant_rpm", "tenant_rate", "key_rpm", "concurrency", "tenant_concurrency",
};
static const char *const REASON_BACKEND = "backend_unavailable";

/* The limiter's Lua library: the Redis side of the checks, shared by the check script below and the policy's
 * batch script (policy.c), which runs it for every admission of a loop turn in one EVALSHA.
 *
 * lim_check checks one request and charges it in the script's memory; lim_commit() writes what the
 * run charged: per window one RPUSH (every hit of the run) and one PEXPIRE, per holder count one HINCRBY,
 * HSET and PEXPIRE, per bucket one HSET and one PEXPIRE. lim_undo_slots(kp, ap) takes back the concurrency
 * holders the last lim_check added (the quota refused). Each key is read once per run (a window's expired
 * head is trimmed with LRANGE + LTRIM and counted with LLEN; a holder count with HGETALL; a bucket with
 * HMGET) and its state kept in LS/LB, so the admissions of one run are decided one after another on exact
 * counts, and Redis runs a handful of commands per distinct key instead of a dozen per request. A window is
 * trimmed again when a later request of the run has a later cut-off.
 *
 * lim_check(kp, ap, now, hub): the request's profile is its 7 keys and 9 arguments (the requests of one
 * tenant, IP and key share them, so the policy's batch sends each profile once), then come its time and
 * the hub's id.
 * KEYS (from kp): 1 global window, 2 IP window, 3 tenant window, 4 tenant bucket, 5 key window,
 *       6 global concurrency counts, 7 tenant concurrency counts.
 * ARGV (from ap): 1 global_rpm, 2 ip_rpm, 3 tenant_rpm, 4 key_rpm, 5 concurrency, 6 tenant_concurrency,
 *       7 rate, 8 burst, 9 slot_ttl_ms. A limit of 0 is not checked and its key is not touched.
 * now: the request's now_ms (a string); hub: the hub's id (its field in the concurrency counts).
 * lim_check returns six values, allowed, index, limit, remaining, reset_ms, retry_ms: refused -> the
 * index of the first limit that said no (nothing charged); allowed -> the rate limit closest to refusing
 * (0 when none applies).
 * Lua turns strings into numbers with strtod and numbers into strings with printf, each a few hundred
 * nanoseconds: a profile's arguments are read once per run (PF, with the list of its active limits), a
 * run of admissions with the same now string reads it once, and a holder's expiry is made a string once
 * per key at commit.
 * A run: once an admission of a profile has been decided in full, lim_check keeps the profile's headroom
 * (the smallest of limit - count - 1 over its windows and holder counts, and floor(tokens - 1) of its
 * bucket). Every limit moves by exactly one per admission, so while the next admissions have the same
 * profile and now string and headroom is left, each is allowed with the same closest limit, its remaining
 * one lower and its reset unchanged (the bucket's recomputed from its tokens), without reading the limits
 * again; lim_flush charges the states for the run when anything else reads them (another profile,
 * lim_undo_slots, lim_commit). A refusal is always decided in full. */
#define LIM_LUA_LIB                                                                                          \
    "local call, tonumber, tostring = redis.call, tonumber, tostring\n"                                      \
    "local ceil, floor, max = math.ceil, math.floor, math.max\n"                                             \
    "local W = 60000\n"                                                                                      \
    "local LS, LB, LD = {}, {}, {}\n"                                                                        \
    "local function lc(k, now)\n"                                                                            \
    "  local s = LS[k]\n"                                                                                    \
    "  if s == nil then\n"                                                                                   \
    "    local h = call('HGETALL', k)\n"                                                                     \
    "    local cnt, exp, dead, n = {}, {}, {}, 0\n"                                                          \
    "    for j = 1, #h, 2 do\n"                                                                              \
    "      local hb = string.match(h[j], '^(.*):e$')\n"                                                      \
    "      if hb then exp[hb] = tonumber(h[j + 1]) else cnt[h[j]] = tonumber(h[j + 1]) end\n"                \
    "    end\n"                                                                                              \
    "    s = {nr = 0, na = 0, holders = true, cnt = cnt, exp = exp}\n"                                       \
    "    for hb, e in pairs(exp) do\n"                                                                       \
    "      local c = cnt[hb] or 0\n"                                                                         \
    "      if e <= now or c <= 0 then\n"                                                                     \
    "        dead[#dead + 1] = hb\n"                                                                         \
    "        dead[#dead + 1] = hb .. ':e'\n"                                                                 \
    "      else\n"                                                                                           \
    "        n = n + c\n"                                                                                    \
    "      end\n"                                                                                            \
    "    end\n"                                                                                              \
    "    for hb, c in pairs(cnt) do\n"                                                                       \
    "      if exp[hb] == nil then dead[#dead + 1] = hb end\n"                                                \
    "    end\n"                                                                                              \
    "    if #dead > 0 then\n"                                                                                \
    "      call('HDEL', k, unpack(dead))\n"                                                                  \
    "      for j = 1, #dead, 2 do cnt[dead[j]], exp[dead[j]] = nil, nil end\n"                               \
    "    end\n"                                                                                              \
    "    s.nr = n\n"                                                                                         \
    "    LS[k] = s\n"                                                                                        \
    "  end\n"                                                                                                \
    "  return s\n"                                                                                           \
    "end\n"                                                                                                  \
    "local NH = 4\n"                                                                                         \
    "local function lw(k, cut)\n"                                                                            \
    "  local s = LS[k]\n"                                                                                    \
    "  if s == nil then\n"                                                                                   \
    "    s = {nr = 0, na = 0, add = {}, list = true}\n"                                                      \
    "    LS[k] = s\n"                                                                                        \
    "  end\n"                                                                                                \
    "  local c = tonumber(cut)\n"                                                                            \
    "  if s.cut == nil or c > s.cut then\n"                                                                  \
    "    local gone, e = 0, NH\n"                                                                            \
    "    while e == NH do\n"                                                                                 \
    "      local h = call('LRANGE', k, 0, NH - 1)\n"                                                         \
    "      e = 0\n"                                                                                          \
    "      while e < #h and tonumber(h[e + 1]) <= c do e = e + 1 end\n"                                      \
    "      if e > 0 then call('LTRIM', k, e, -1) end\n"                                                      \
    "      gone = gone + e\n"                                                                                \
    "      s.old = tonumber(h[e + 1])\n"                                                                     \
    "    end\n"                                                                                              \
    "    if s.cut == nil then s.nr = call('LLEN', k) else s.nr = s.nr - gone end\n"                          \
    "    s.cut = c\n"                                                                                        \
    "  end\n"                                                                                                \
    "  return s\n"                                                                                           \
    "end\n"                                                                                                  \
    "local function lold(s, now)\n"                                                                          \
    "  if s.nr + s.na == 0 then return W end\n"                                                              \
    "  local o = s.old\n"                                                                                    \
    "  if s.nr == 0 then o = tonumber(s.add[1]) end\n"                                                       \
    "  return o + W - now\n"                                                                                 \
    "end\n"                                                                                                  \
    "local function lbucket(k, now, burst)\n"                                                                \
    "  local b = LB[k]\n"                                                                                    \
    "  if b == nil then\n"                                                                                   \
    "    local h = call('HMGET', k, 'tokens', 'ts')\n"                                                       \
    "    local t, ts = tonumber(h[1]), tonumber(h[2])\n"                                                     \
    "    if t == nil or ts == nil then t, ts = burst, now end\n"                                             \
    "    b = {t = t, ts = ts, ts0 = tonumber(h[2])}\n"                                                       \
    "    LB[k] = b\n"                                                                                        \
    "  end\n"                                                                                                \
    "  return b\n"                                                                                           \
    "end\n"                                                                                                  \
    "local PF = {}\n"                                                                                        \
    "local function lim_prof(kp, ap)\n"                                                                      \
    "  local p = PF[ap]\n"                                                                                   \
    "  if p == nil then\n"                                                                                   \
    "    local rate, burst = tonumber(ARGV[ap + 6]), tonumber(ARGV[ap + 7])\n"                               \
    "    if burst <= 0 then burst = rate end\n"                                                              \
    "    p = {rate = rate, burst = burst, ttl = tonumber(ARGV[ap + 8]), ttls = ARGV[ap + 8], act = {}, lim " \
    "= {}, key = {}}\n"                                                                                      \
    "    for i = 1, 7 do\n"                                                                                  \
    "      local l\n"                                                                                        \
    "      if i == 4 then\n"                                                                                 \
    "        l = 0\n"                                                                                        \
    "        if rate > 0 then l = burst end\n"                                                               \
    "      elseif i < 4 then\n"                                                                              \
    "        l = tonumber(ARGV[ap + i - 1])\n"                                                               \
    "      else\n"                                                                                           \
    "        l = tonumber(ARGV[ap + i - 2])\n"                                                               \
    "      end\n"                                                                                            \
    "      if l > 0 then\n"                                                                                  \
    "        p.act[#p.act + 1] = i\n"                                                                        \
    "        p.lim[i] = l\n"                                                                                 \
    "        p.key[i] = KEYS[kp + i - 1]\n"                                                                  \
    "      end\n"                                                                                            \
    "    end\n"                                                                                              \
    "    PF[ap] = p\n"                                                                                       \
    "  end\n"                                                                                                \
    "  return p\n"                                                                                           \
    "end\n"                                                                                                  \
    "local NS, NN\n"                                                                                         \
    "local ST = {}\n"                                                                                        \
    "local RUN\n"                                                                                            \
    "local function lim_flush()\n"                                                                           \
    "  local p = RUN\n"                                                                                      \
    "  RUN = nil\n"                                                                                          \
    "  if p == nil or p.k == 0 then return end\n"                                                            \
    "  local k, act, key = p.k, p.act, p.key\n"                                                              \
    "  p.k = 0\n"                                                                                            \
    "  for j = 1, #act do\n"                                                                                 \
    "    local i = act[j]\n"                                                                                 \
    "    if i == 4 then\n"                                                                                   \
    "      local b = LB[key[i]]\n"                                                                           \
    "      b.t = b.t - k\n"                                                                                  \
    "    else\n"                                                                                             \
    "      local s = LS[key[i]]\n"                                                                           \
    "      if i < 6 then\n"                                                                                  \
    "        local a, n = s.add, #s.add\n"                                                                   \
    "        for x = n + 1, n + k do a[x] = p.rn end\n"                                                      \
    "      end\n"                                                                                            \
    "      s.na = s.na + k\n"                                                                                \
    "    end\n"                                                                                              \
    "  end\n"                                                                                                \
    "end\n"                                                                                                  \
    "local function lim_check(kp, ap, nows, hub)\n"                                                          \
    "  local p = lim_prof(kp, ap)\n"                                                                         \
    "  if RUN == p and p.rn == nows and p.h >= 1 then\n"                                                     \
    "    p.k, p.h = p.k + 1, p.h - 1\n"                                                                      \
    "    local best = p.best\n"                                                                              \
    "    if best ~= 0 then p.brem = p.brem - 1 end\n"                                                        \
    "    if best == 4 then\n"                                                                                \
    "      p.breset = ceil((p.burst - p.bt + 1) * 1000 / p.rate)\n"                                          \
    "      p.bt = p.bt - 1\n"                                                                                \
    "    end\n"                                                                                              \
    "    return 1, best, p.bl, p.brem, p.breset, 0\n"                                                        \
    "  end\n"                                                                                                \
    "  if RUN ~= nil then lim_flush() end\n"                                                                 \
    "  local now = NN\n"                                                                                     \
    "  if nows ~= NS then now = tonumber(nows); NS, NN = nows, now end\n"                                    \
    "  local rate, burst = p.rate, p.burst\n"                                                                \
    "  local best, bl, brem, breset, bs = 0, 0, 0, 0, nil\n"                                                 \
    "  local st, tokens, h = ST, 0, math.huge\n"                                                             \
    "  local act, lim, key = p.act, p.lim, p.key\n"                                                          \
    "  for j = 1, #act do\n"                                                                                 \
    "    local i = act[j]\n"                                                                                 \
    "    local l, k = lim[i], key[i]\n"                                                                      \
    "    if i == 4 then\n"                                                                                   \
    "      local b = lbucket(k, now, burst)\n"                                                               \
    "      local el = now - b.ts\n"                                                                          \
    "      if el < 0 then el = 0 end\n"                                                                      \
    "      local t = b.t + el * rate / 1000\n"                                                               \
    "      if t > burst then t = burst end\n"                                                                \
    "      if t < 1 then\n"                                                                                  \
    "        local wait = ceil((1 - t) * 1000 / rate)\n"                                                     \
    "        return 0, 4, burst, 0, wait, wait\n"                                                            \
    "      end\n"                                                                                            \
    "      tokens, st[4] = t, b\n"                                                                           \
    "      local rem = floor(t - 1)\n"                                                                       \
    "      if rem < h then h = rem end\n"                                                                    \
    "      if best == 0 or rem < brem then\n"                                                                \
    "        best, bl, brem, breset, bs = 4, burst, rem, ceil((burst - t + 1) * 1000 / rate), nil\n"         \
    "      end\n"                                                                                            \
    "    elseif i >= 6 then\n"                                                                               \
    "      local s = lc(k, now)\n"                                                                           \
    "      local n = s.nr + s.na\n"                                                                          \
    "      if n >= l then return 0, i, l, 0, 1000, 1000 end\n"                                               \
    "      if l - n - 1 < h then h = l - n - 1 end\n"                                                        \
    "      st[i] = s\n"                                                                                      \
    "    else\n"                                                                                             \
    "      local s = lw(k, now - W)\n"                                                                       \
    "      local n = s.nr + s.na\n"                                                                          \
    "      if n >= l then\n"                                                                                 \
    "        local reset = lold(s, now)\n"                                                                   \
    "        return 0, i, l, 0, reset, reset\n"                                                              \
    "      end\n"                                                                                            \
    "      st[i] = s\n"                                                                                      \
    "      if l - n - 1 < h then h = l - n - 1 end\n"                                                        \
    "      if best == 0 or l - n - 1 < brem then best, bl, brem, bs = i, l, l - n - 1, s end\n"              \
    "    end\n"                                                                                              \
    "  end\n"                                                                                                \
    "  if bs ~= nil then breset = lold(bs, now) end\n"                                                       \
    "  for j = 1, #act do\n"                                                                                 \
    "    local i = act[j]\n"                                                                                 \
    "    local s = st[i]\n"                                                                                  \
    "    if not s.dirty then\n"                                                                              \
    "      s.dirty = true\n"                                                                                 \
    "      LD[#LD + 1] = key[i]\n"                                                                           \
    "    end\n"                                                                                              \
    "    if i == 4 then\n"                                                                                   \
    "      s.t, s.ts, s.rate, s.burst = tokens - 1, max(s.ts, now), rate, burst\n"                           \
    "    else\n"                                                                                             \
    "      if i >= 6 then\n"                                                                                 \
    "        s.hub, s.untn, s.ttl = hub, now + p.ttl, p.ttls\n"                                              \
    "      else\n"                                                                                           \
    "        local a = s.add\n"                                                                              \
    "        a[#a + 1] = nows\n"                                                                             \
    "      end\n"                                                                                            \
    "      s.na = s.na + 1\n"                                                                                \
    "    end\n"                                                                                              \
    "  end\n"                                                                                                \
    "  RUN, p.rn, p.k, p.h = p, nows, 0, h\n"                                                                \
    "  p.best, p.bl, p.brem, p.breset, p.bt = best, bl, brem, breset, tokens - 1\n"                          \
    "  return 1, best, bl, brem, breset, 0\n"                                                                \
    "end\n"                                                                                                  \
    "local function lim_undo_slots(kp, ap)\n"                                                                \
    "  lim_flush()\n"                                                                                        \
    "  local p = lim_prof(kp, ap)\n"                                                                         \
    "  for i = 6, 7 do\n"                                                                                    \
    "    if p.lim[i] then\n"                                                                                 \
    "      local s = LS[p.key[i]]\n"                                                                         \
    "      s.na = s.na - 1\n"                                                                                \
    "    end\n"                                                                                              \
    "  end\n"                                                                                                \
    "end\n"                                                                                                  \
    "local function lim_commit()\n"                                                                          \
    "  lim_flush()\n"                                                                                        \
    "  for _, k in ipairs(LD) do\n"                                                                          \
    "    local b, s = LB[k], LS[k]\n"                                                                        \
    "    if b ~= nil then\n"                                                                                 \
    "      call('HSET', k, 'tokens', tostring(b.t), 'ts', tostring(b.ts))\n"                                 \
    "      if b.ts0 == nil or b.ts - b.ts0 >= 1000 then\n"                                                   \
    "        call('PEXPIRE', k, ceil(b.burst * 1000 / b.rate) + 2000)\n"                                     \
    "      end\n"                                                                                            \
    "    elseif s.na > 0 and s.list then\n"                                                                  \
    "      call('RPUSH', k, unpack(s.add))\n"                                                                \
    "      call('PEXPIRE', k, '61000')\n"                                                                    \
    "    elseif s.na > 0 then\n"                                                                             \
    "      local e0 = s.exp[s.hub]\n"                                                                        \
    "      call('HSET', k, s.hub, (s.cnt[s.hub] or 0) + s.na, s.hub .. ':e', tostring(s.untn))\n"            \
    "      if e0 == nil or s.untn - e0 >= 1000 then call('PEXPIRE', k, tonumber(s.ttl) + 1000) end\n"        \
    "    end\n"                                                                                              \
    "  end\n"                                                                                                \
    "end\n"

/* One request on its own (the routes that do not go through the policy). */
static const char CHECK_LUA[] = LIM_LUA_LIB "local r = {lim_check(1, 1, ARGV[10], ARGV[11])}\n"
                                            "lim_commit()\n"
                                            "return r\n";

/* KEYS: the concurrency holder counts of the slot. ARGV: 1 member ("<hub id>:<sequence>"). */
static const char RELEASE_LUA[] = "local hb = string.match(ARGV[1], '^[^:]*')\n"
                                  "for i = 1, #KEYS do\n"
                                  "  if redis.call('HINCRBY', KEYS[i], hb, -1) <= 0 then\n"
                                  "    redis.call('HDEL', KEYS[i], hb, hb .. ':e')\n"
                                  "  end\n"
                                  "end\n"
                                  "return 0\n";

/* ---- sliding window: a ring of hit timestamps ----------------------------------------------------- */

typedef struct lim_win {
    int64_t *ts;
    uint32_t cap, head, n;
} lim_win;

static void win_prune(lim_win *w, int64_t now)
{
    while (w->n > 0 && w->ts[w->head] <= now - LIM_WINDOW_MS) {
        w->head = (w->head + 1) % w->cap;
        w->n--;
    }
}

/* ms until the oldest hit leaves; a full window when empty. */
static int64_t win_reset_ms(const lim_win *w, int64_t now)
{
    return w->n > 0 ? w->ts[w->head] + LIM_WINDOW_MS - now : LIM_WINDOW_MS;
}

/* Makes room for one more hit (n < limit). */
static int win_reserve(lim_win *w, int64_t limit)
{
    if (w->n < w->cap) return 0;
    uint64_t ncap = w->cap ? (uint64_t)w->cap * 2 : 4;
    if ((int64_t)ncap > limit) ncap = (uint64_t)limit;
    if (ncap <= w->n) ncap = (uint64_t)w->n + 1;
    if (ncap > UINT32_MAX) return -1;
    int64_t *ts = malloc(ncap * sizeof *ts);
    if (ts == NULL) return -1;
    for (uint32_t i = 0; i < w->n; i++)
        ts[i] = w->ts[(w->head + i) % w->cap];
    free(w->ts);
    w->ts = ts;
    w->cap = (uint32_t)ncap;
    w->head = 0;
    return 0;
}

static void win_push(lim_win *w, int64_t now)
{
    w->ts[(w->head + w->n) % w->cap] = now;
    w->n++;
}

static void win_free(lim_win *w)
{
    free(w->ts);
    memset(w, 0, sizeof *w);
}

/* ---- bounded hash tables with LRU and idle expiry ------------------------------------------------- */

typedef struct lim_entry lim_entry;
struct lim_entry {
    lim_entry *hnext;     /* hash chain */
    lim_entry *mru, *lru; /* neighbours towards the most / least recently used end */
    uint64_t hash;
    int64_t last_ms;
    lim_win win;
    bool bucket;
    double tokens;
    int64_t tok_ms;
    int64_t rate, burst;
    int64_t inflight; /* tenant slots held: pins the entry */
    size_t keylen;
    char key[];
};

typedef struct lim_table {
    lim_entry **slots;
    size_t nslots, n, max;
    lim_entry *mru_end, *lru_end;
    uint64_t seed;
} lim_table;

static uint64_t lim_hash(uint64_t seed, const char *s, size_t n)
{
    uint64_t h = seed ^ 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ULL;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

static lim_entry *table_find(const lim_table *t, const char *key)
{
    if (t->nslots == 0) return NULL;
    size_t n = strlen(key);
    uint64_t h = lim_hash(t->seed, key, n);
    for (lim_entry *e = t->slots[h & (t->nslots - 1)]; e != NULL; e = e->hnext)
        if (e->hash == h && e->keylen == n && memcmp(e->key, key, n) == 0) return e;
    return NULL;
}

static void lru_unlink(lim_table *t, lim_entry *e)
{
    if (e->mru)
        e->mru->lru = e->lru;
    else
        t->mru_end = e->lru;
    if (e->lru)
        e->lru->mru = e->mru;
    else
        t->lru_end = e->mru;
    e->mru = e->lru = NULL;
}

static void lru_push_mru(lim_table *t, lim_entry *e)
{
    e->mru = NULL;
    e->lru = t->mru_end;
    if (t->mru_end)
        t->mru_end->mru = e;
    else
        t->lru_end = e;
    t->mru_end = e;
}

static void table_touch(lim_table *t, lim_entry *e, int64_t now)
{
    e->last_ms = now;
    if (t->mru_end == e) return;
    lru_unlink(t, e);
    lru_push_mru(t, e);
}

static void table_remove(lim_table *t, lim_entry *e)
{
    lim_entry **pp = &t->slots[e->hash & (t->nslots - 1)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    lru_unlink(t, e);
    t->n--;
    win_free(&e->win);
    free(e);
}

/* Nothing would be lost by dropping e: no slots held, no hits in the window, bucket full again. */
static bool entry_idle(const lim_entry *e, int64_t now)
{
    if (e->inflight > 0) return false;
    if (e->win.n > 0 && e->win.ts[(e->win.head + e->win.n - 1) % e->win.cap] > now - LIM_WINDOW_MS)
        return false;
    if (e->bucket && e->rate > 0 &&
        e->tokens + (double)(now - e->tok_ms) * (double)e->rate / 1000.0 < (double)e->burst)
        return false;
    return true;
}

/* Drops up to steps entries untouched for more than LIM_IDLE_MS. An old entry that must stay (pinned, or
 * its bucket still refilling) moves to the recent end, so it does not block the others. */
static void table_expire(lim_table *t, int64_t now, size_t steps)
{
    for (size_t i = 0; i < steps && t->lru_end != NULL; i++) {
        lim_entry *e = t->lru_end;
        if (now - e->last_ms <= LIM_IDLE_MS) break;
        if (entry_idle(e, now)) {
            table_remove(t, e);
        } else {
            lru_unlink(t, e);
            lru_push_mru(t, e);
        }
    }
}

static int table_grow(lim_table *t)
{
    size_t ns = t->nslots ? t->nslots * 2 : 16;
    lim_entry **slots = calloc(ns, sizeof *slots);
    if (slots == NULL) return -1;
    for (size_t i = 0; i < t->nslots; i++) {
        lim_entry *e = t->slots[i];
        while (e != NULL) {
            lim_entry *next = e->hnext;
            e->hnext = slots[e->hash & (ns - 1)];
            slots[e->hash & (ns - 1)] = e;
            e = next;
        }
    }
    free(t->slots);
    t->slots = slots;
    t->nslots = ns;
    return 0;
}

/* The entry for key, created (as most recently used) when missing. NULL on ENOMEM. When the table is
 * full the least recently used entry that holds no slot is evicted; if every entry tried holds slots the
 * table goes over its bound (slots are bounded by the requests in flight). */
static lim_entry *table_get(lim_table *t, const char *key, int64_t now)
{
    lim_entry *e = table_find(t, key);
    if (e != NULL) {
        table_touch(t, e, now);
        return e;
    }
    for (size_t tries = 0; t->n >= t->max && t->lru_end != NULL && tries < 64; tries++) {
        lim_entry *old = t->lru_end;
        if (old->inflight == 0) {
            table_remove(t, old);
        } else {
            lru_unlink(t, old);
            lru_push_mru(t, old);
        }
    }
    if (t->n + 1 > t->nslots && table_grow(t) != 0) return NULL;
    size_t n = strlen(key);
    e = calloc(1, sizeof *e + n + 1);
    if (e == NULL) return NULL;
    memcpy(e->key, key, n + 1);
    e->keylen = n;
    e->hash = lim_hash(t->seed, key, n);
    e->last_ms = now;
    lim_entry **head = &t->slots[e->hash & (t->nslots - 1)];
    e->hnext = *head;
    *head = e;
    lru_push_mru(t, e);
    t->n++;
    return e;
}

static void table_free(lim_table *t)
{
    while (t->lru_end != NULL)
        table_remove(t, t->lru_end);
    free(t->slots);
    memset(t, 0, sizeof *t);
}

/* ---- the limiter ---------------------------------------------------------------------------------- */

typedef struct lim_pending lim_pending;

struct th_limit_slot {
    th_limiter *l; /* NULL once the limiter is gone */
    th_limit_slot *prev, *next;
    lim_entry *tenant;            /* local: the tenant entry whose inflight this slot holds */
    bool redis;                   /* Redis holders to remove on release */
    const char *redis_global_key; /* the global holder set, or NULL (in keys) */
    const char *redis_tenant_key; /* the tenant's holder set, or NULL (in keys) */
    char member[48];
    char keys[]; /* a Redis slot's holder keys, in the same block */
};

struct th_limiter {
    uv_loop_t *loop;
    th_log *log;
    th_redis *redis;
    bool use_redis, fail_closed;
    int64_t global_rpm, ip_rpm, conc, slot_ttl_ms;
    char *prefix;
    char hub_id[17];
    uint64_t seq;
    int64_t last_now;
    lim_win gwin;
    lim_table ips, tenants, keys;
    int64_t inflight;
    th_limit_slot *slots;
    lim_pending *pending;
};

/* One request's limits, resolved from th_limit_req. */
typedef struct lim_args {
    const char *ip, *tenant, *key_id;
    int64_t t_rpm, t_rate, t_burst, t_conc, key_rpm;
} lim_args;

struct lim_pending {
    th_limiter *l; /* NULL once the limiter is gone: the reply only frees this */
    lim_pending *prev, *next;
    th_limit_cb cb;
    void *ud;
    int64_t now;
    lim_args a;
    char member[48];
    char strs[]; /* ip, tenant, key_id (NUL-separated), a.* point here */
};

/* The keys and arguments of CHECK_LUA for one request (they point into nums, the limiter and the block). One
 * block holds the call, then its pending state, then the pending's strings, then the seven keys: a request
 * costs one allocation here, not three. */
struct th_limit_call {
    lim_pending *p; /* in this block, right after the call */
    char nums[10][24];
    const char *argv[TH_LIMIT_CALL_ARGS];
    size_t lens[TH_LIMIT_CALL_ARGS];
};
_Static_assert(sizeof(th_limit_call) % _Alignof(lim_pending) == 0, "the pending state follows the call");

static int64_t ceil_s(int64_t ms)
{
    return ms <= 1000 ? 1 : (ms + 999) / 1000;
}

static void res_refuse(th_limit_result *res, int status, const char *reason, int64_t limit, int64_t wait_ms)
{
    memset(res, 0, sizeof *res);
    res->allowed = false;
    res->status = status;
    res->reason = reason;
    res->limit = limit;
    res->remaining = 0;
    res->reset_s = ceil_s(wait_ms);
    res->retry_after_s = res->reset_s;
}

static void res_backend(th_limit_result *res)
{
    res_refuse(res, 503, REASON_BACKEND, 0, 1000);
}

static void slot_link(th_limiter *l, th_limit_slot *s)
{
    s->l = l;
    TH_DL_PUSH_FRONT(l->slots, s, prev, next);
    l->inflight++;
}

static int64_t lim_now(th_limiter *l, uint64_t now_ms)
{
    int64_t now = now_ms > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)now_ms;
    if (now < l->last_now) return l->last_now;
    l->last_now = now;
    return now;
}

static double bucket_tokens(const lim_entry *e, int64_t burst, int64_t rate, int64_t now)
{
    if (e == NULL || !e->bucket) return (double)burst;
    int64_t el = now - e->tok_ms;
    if (el < 0) el = 0;
    double t = e->tokens + (double)el * (double)rate / 1000.0;
    return t > (double)burst ? (double)burst : t;
}

/* The X-RateLimit-* candidate closest to refusing. */
typedef struct lim_hdr {
    int idx;
    int64_t limit, remaining, reset_ms;
} lim_hdr;

static void hdr_note(lim_hdr *h, int idx, int64_t limit, int64_t remaining, int64_t reset_ms)
{
    if (h->idx == 0 || remaining < h->remaining) *h = (lim_hdr){idx, limit, remaining, reset_ms};
}

/* What one local admission uses: which limits apply, and the entries they live in. */
typedef struct lim_plan {
    bool use_ip, use_trpm, use_rate, use_tconc, use_key;
    int64_t burst;
    double tokens; /* the tenant's bucket before this request */
    lim_entry *ipe, *te, *ke;
} lim_plan;

/* One sliding window: false (refused, res set) when full, else its header is noted. */
static bool win_admits(lim_entry *e, int64_t limit, int idx, int64_t now, lim_hdr *hdr, th_limit_result *res)
{
    int64_t n = 0, reset = LIM_WINDOW_MS;
    if (e) {
        win_prune(&e->win, now);
        n = e->win.n;
        reset = win_reset_ms(&e->win, now);
    }
    if (n >= limit) {
        res_refuse(res, 429, lim_reason[idx], limit, reset);
        return false;
    }
    hdr_note(hdr, idx, limit, limit - n - 1, reset);
    return true;
}

/* Phase 1: checks, in order, without creating or charging anything. */
static bool local_admits(th_limiter *l, const lim_args *a, int64_t now, lim_plan *pl, lim_hdr *hdr,
                         th_limit_result *res)
{
    if (l->global_rpm > 0) {
        win_prune(&l->gwin, now);
        int64_t reset = win_reset_ms(&l->gwin, now);
        if ((int64_t)l->gwin.n >= l->global_rpm) {
            res_refuse(res, 429, lim_reason[L_GLOBAL], l->global_rpm, reset);
            return false;
        }
        hdr_note(hdr, L_GLOBAL, l->global_rpm, l->global_rpm - l->gwin.n - 1, reset);
    }
    pl->ipe = pl->use_ip ? table_find(&l->ips, a->ip) : NULL;
    if (pl->use_ip && !win_admits(pl->ipe, l->ip_rpm, L_IP, now, hdr, res)) return false;
    pl->te = a->tenant[0] != '\0' ? table_find(&l->tenants, a->tenant) : NULL;
    if (pl->use_trpm && !win_admits(pl->te, a->t_rpm, L_TENANT, now, hdr, res)) return false;
    if (pl->use_rate) {
        pl->tokens = bucket_tokens(pl->te, pl->burst, a->t_rate, now);
        if (pl->tokens < 1.0) {
            int64_t wait = (int64_t)ceil((1.0 - pl->tokens) * 1000.0 / (double)a->t_rate);
            res_refuse(res, 429, lim_reason[L_RATE], pl->burst, wait);
            return false;
        }
        hdr_note(hdr, L_RATE, pl->burst, (int64_t)floor(pl->tokens - 1.0),
                 (int64_t)ceil(((double)pl->burst - pl->tokens + 1.0) * 1000.0 / (double)a->t_rate));
    }
    pl->ke = pl->use_key ? table_find(&l->keys, a->key_id) : NULL;
    if (pl->use_key && !win_admits(pl->ke, a->key_rpm, L_KEY, now, hdr, res)) return false;
    if (l->conc > 0 && l->inflight >= l->conc) {
        res_refuse(res, 429, lim_reason[L_CONC], l->conc, 1000);
        return false;
    }
    if (pl->use_tconc && pl->te && pl->te->inflight >= a->t_conc) {
        res_refuse(res, 429, lim_reason[L_TCONC], a->t_conc, 1000);
        return false;
    }
    return true;
}

/* Phase 2: everything that can fail (allocations), before anything is charged. */
static th_limit_slot *local_prepare(th_limiter *l, const lim_args *a, int64_t now, lim_plan *pl)
{
    th_limit_slot *slot = calloc(1, sizeof *slot);
    if (slot == NULL) return NULL;
    if (l->global_rpm > 0 && win_reserve(&l->gwin, l->global_rpm) != 0) goto nomem;
    if (pl->use_ip) {
        pl->ipe = table_get(&l->ips, a->ip, now);
        if (pl->ipe == NULL || win_reserve(&pl->ipe->win, l->ip_rpm) != 0) goto nomem;
    }
    if (pl->use_trpm || pl->use_rate || pl->use_tconc) {
        pl->te = table_get(&l->tenants, a->tenant, now);
        if (pl->te == NULL || (pl->use_trpm && win_reserve(&pl->te->win, a->t_rpm) != 0)) goto nomem;
    }
    if (pl->use_key) {
        pl->ke = table_get(&l->keys, a->key_id, now);
        if (pl->ke == NULL || win_reserve(&pl->ke->win, a->key_rpm) != 0) goto nomem;
    }
    return slot;
nomem:
    free(slot);
    return NULL;
}

/* Phase 3: charge. */
static void local_charge(th_limiter *l, const lim_args *a, int64_t now, const lim_plan *pl,
                         th_limit_slot *slot)
{
    if (l->global_rpm > 0) win_push(&l->gwin, now);
    if (pl->use_ip) win_push(&pl->ipe->win, now);
    if (pl->use_trpm) win_push(&pl->te->win, now);
    if (pl->use_rate) {
        lim_entry *te = pl->te;
        te->bucket = true;
        te->tokens = pl->tokens - 1.0;
        te->tok_ms = now > te->tok_ms ? now : te->tok_ms;
        te->rate = a->t_rate;
        te->burst = pl->burst;
    }
    if (pl->use_key) win_push(&pl->ke->win, now);
    if (pl->use_tconc) {
        pl->te->inflight++;
        slot->tenant = pl->te;
    }
    slot_link(l, slot);
}

static void local_check(th_limiter *l, const lim_args *a, int64_t now, th_limit_result *res)
{
    lim_hdr hdr = {0};
    table_expire(&l->ips, now, LIM_EXPIRE_STEPS);
    table_expire(&l->tenants, now, LIM_EXPIRE_STEPS);
    table_expire(&l->keys, now, LIM_EXPIRE_STEPS);
    bool has_tenant = a->tenant[0] != '\0';
    lim_plan pl = {
        .use_ip = l->ip_rpm > 0 && a->ip[0] != '\0',
        .use_trpm = has_tenant && a->t_rpm > 0,
        .use_rate = has_tenant && a->t_rate > 0,
        .use_tconc = has_tenant && a->t_conc > 0,
        .use_key = a->key_rpm > 0 && a->key_id[0] != '\0',
        .burst = a->t_burst > 0 ? a->t_burst : a->t_rate,
    };
    if (!local_admits(l, a, now, &pl, &hdr, res)) return;
    th_limit_slot *slot = local_prepare(l, a, now, &pl);
    if (slot == NULL) {
        TH_LOG(l->log, TH_LOG_ERROR, "limiter: out of memory");
        res_backend(res);
        return;
    }
    local_charge(l, a, now, &pl, slot);
    memset(res, 0, sizeof *res);
    res->allowed = true;
    res->slot = slot;
    if (hdr.idx != 0) {
        res->limit = hdr.limit;
        res->remaining = hdr.remaining < 0 ? 0 : hdr.remaining;
        res->reset_s = ceil_s(hdr.reset_ms);
    }
}

static void args_from_req(const th_limit_req *req, lim_args *a)
{
    const th_tenant_conf *tc = req->tconf;
    memset(a, 0, sizeof *a);
    a->ip = req->ip ? req->ip : "";
    a->tenant = req->tenant && req->tenant[0] ? req->tenant : (tc && tc->name ? tc->name : "");
    a->key_id = req->key_id ? req->key_id : "";
    if (tc != NULL) {
        a->t_rpm = tc->rpm > 0 ? tc->rpm : 0;
        a->t_rate = tc->rate > 0 ? tc->rate : 0;
        a->t_burst = tc->burst > 0 ? tc->burst : 0;
        a->t_conc = tc->concurrency > 0 ? tc->concurrency : 0;
    }
    a->key_rpm = req->key_rpm > 0 ? req->key_rpm : 0;
}

static void apply_config(th_limiter *l, const th_config *cfg)
{
    l->global_rpm = cfg->rate_limit.global_rpm > 0 ? cfg->rate_limit.global_rpm : 0;
    l->ip_rpm = cfg->rate_limit.ip_rpm > 0 ? cfg->rate_limit.ip_rpm : 0;
    l->conc = cfg->rate_limit.concurrency > 0 ? cfg->rate_limit.concurrency : 0;
    l->fail_closed =
        cfg->rate_limit.on_backend_error && strcmp(cfg->rate_limit.on_backend_error, "closed") == 0;
    uint64_t rt = cfg->limits.request_timeout_ms;
    l->slot_ttl_ms = rt > 0 && rt < (uint64_t)INT64_MAX / 2 ? (int64_t)rt + LIM_SLOT_TTL_EXTRA_MS
                                                            : LIM_SLOT_TTL_DEFAULT_MS;
}

th_limiter *th_limiter_new(uv_loop_t *loop, const th_config *cfg, th_redis *redis, th_log *log)
{
    if (cfg == NULL) return NULL;
    th_limiter *l = calloc(1, sizeof *l);
    if (l == NULL) return NULL;
    l->loop = loop;
    l->log = log;
    l->redis = redis;
    l->use_redis = cfg->rate_limit.backend && strcmp(cfg->rate_limit.backend, "redis") == 0;
    apply_config(l, cfg);
    l->prefix = th_strndup(cfg->redis.prefix ? cfg->redis.prefix : "",
                           cfg->redis.prefix ? strlen(cfg->redis.prefix) : 0);
    if (l->prefix == NULL) {
        free(l);
        return NULL;
    }
    uint64_t rnd[2] = {0, 0};
    if (getrandom(rnd, sizeof rnd, GRND_NONBLOCK) != (ssize_t)sizeof rnd) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        rnd[0] = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ (uint64_t)(uintptr_t)l;
        rnd[1] = lim_hash(rnd[0], (const char *)&l, sizeof l);
    }
    th_hex((const uint8_t *)&rnd[0], 8, l->hub_id);
    l->ips.max = l->tenants.max = l->keys.max = LIM_TABLE_MAX;
    l->ips.seed = rnd[1];
    l->tenants.seed = rnd[1] ^ 0x9e3779b97f4a7c15ULL;
    l->keys.seed = rnd[1] ^ 0x6a09e667f3bcc909ULL;
    if (l->use_redis && redis == NULL)
        TH_LOG(log, TH_LOG_WARN,
               "limiter: backend redis without a Redis client: every check is a backend error");
    return l;
}

void th_limiter_set_config(th_limiter *l, const th_config *cfg)
{
    if (l != NULL && cfg != NULL) apply_config(l, cfg);
}

/* ---- Redis backend -------------------------------------------------------------------------------- */

static void pending_unlink(th_limiter *l, lim_pending *p)
{
    TH_DL_UNLINK(l->pending, p, prev, next);
}

/* Appends prefix + part + id and records the offset; the pointers are resolved once the buffer is done. */
static int key_add(th_buf *b, const char *prefix, const char *part, const char *id, size_t *off, size_t *len)
{
    *off = b->len;
    if (th_buf_append_str(b, prefix) != TH_BUF_OK || th_buf_append_str(b, part) != TH_BUF_OK ||
        th_buf_append_str(b, id) != TH_BUF_OK)
        return -1;
    *len = b->len - *off;
    return th_buf_append_byte(b, 0) == TH_BUF_OK ? 0 : -1;
}

static void on_release_reply(void *ud, th_redis_status st, const th_redis_reply *reply)
{
    (void)ud;
    (void)st;
    (void)reply;
}

/* Removes member from the holder sets gkey and tkey (either may be NULL). */
static void redis_release(th_limiter *l, const char *gkey, const char *tkey, const char *member)
{
    const char *argv[3];
    size_t lens[3];
    int nkeys = 0;
    if (gkey != NULL) argv[nkeys++] = gkey;
    if (tkey != NULL) argv[nkeys++] = tkey;
    if (l->redis == NULL || nkeys == 0) return;
    argv[nkeys] = member;
    for (int i = 0; i <= nkeys; i++)
        lens[i] = strlen(argv[i]);
    if (th_redis_eval(l->redis, on_release_reply, NULL, RELEASE_LUA, nkeys, nkeys + 1, argv, lens) != 0)
        TH_LOG(l->log, TH_LOG_WARN,
               "limiter: cannot release a Redis slot (out of memory); it expires in %lld ms",
               (long long)l->slot_ttl_ms);
}

/* A Redis slot for the pending check p, with its holder keys in the same block. NULL on ENOMEM. */
static th_limit_slot *redis_slot_new(const th_limiter *l, const lim_pending *p)
{
    size_t plen = strlen(l->prefix), tn = strlen(p->a.tenant);
    bool g = l->conc > 0, t = p->a.t_conc > 0 && tn > 0;
    size_t gl = g ? plen + 6 : 0, tl = t ? plen + 7 + tn : 0;
    th_limit_slot *s = calloc(1, sizeof *s + gl + 1 + tl + 1); /* zeroed: the keys' NULs are there */
    if (s == NULL) return NULL;
    char *kb = s->keys;
    if (g) {
        memcpy(kb, l->prefix, plen);
        memcpy(kb + plen, "rl:h:g", 6);
        s->redis_global_key = kb;
        kb += gl + 1;
    }
    if (t) {
        memcpy(kb, l->prefix, plen);
        memcpy(kb + plen, "rl:h:t:", 7);
        memcpy(kb + plen + 7, p->a.tenant, tn);
        s->redis_tenant_key = kb;
    }
    s->redis = true;
    th_strlcpy(s->member, p->member, sizeof s->member);
    return s;
}

static bool parse_check_reply(const th_redis_reply *r, int64_t v[6])
{
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 6) return false;
    for (size_t i = 0; i < 6; i++) {
        if (r->element[i].type != REDIS_REPLY_INTEGER) return false;
        v[i] = r->element[i].integer;
    }
    return v[1] >= 0 && v[1] <= L_N;
}

/* The answer to a check: v = the six integers of CHECK_LUA, or NULL when Redis failed (st, reply say how).
 * slots_given_back: the combined script gave the concurrency slots back already (the quota refused). */
static void check_finish(th_limiter *l, lim_pending *p, const int64_t *v, th_redis_status st,
                         const th_redis_reply *reply, bool slots_given_back, th_limit_result *res)
{
    if (v != NULL) {
        int idx = (int)v[1];
        if (v[0] == 0) {
            res_refuse(res, 429, idx > 0 ? lim_reason[idx] : REASON_BACKEND, v[2], v[5] > v[4] ? v[5] : v[4]);
            return;
        }
        memset(res, 0, sizeof *res);
        res->allowed = true;
        if (idx > 0) {
            res->limit = v[2];
            res->remaining = v[3] < 0 ? 0 : v[3];
            res->reset_s = ceil_s(v[4]);
        }
        if (slots_given_back) return;
        th_limit_slot *slot = redis_slot_new(l, p);
        if (slot == NULL) {
            /* charged in Redis but no memory to hold the slot: give it back (if the keys fit) and refuse */
            th_buf b;
            th_buf_init(&b, 0); /* keys of bounded parts */
            size_t off[2], len[2];
            if (key_add(&b, l->prefix, "rl:h:g", "", &off[0], &len[0]) == 0 &&
                key_add(&b, l->prefix, "rl:h:t:", p->a.tenant, &off[1], &len[1]) == 0) {
                bool tconc = p->a.t_conc > 0 && p->a.tenant[0] != '\0';
                redis_release(l, l->conc > 0 ? (const char *)b.data + off[0] : NULL,
                              tconc ? (const char *)b.data + off[1] : NULL, p->member);
            }
            th_buf_free(&b);
            res_backend(res);
            return;
        }
        slot_link(l, slot);
        res->slot = slot;
        return;
    }
    if (st == TH_REDIS_ERROR || st == TH_REDIS_OK)
        TH_LOG(l->log, TH_LOG_ERROR, "limiter: the Redis check script failed: %.*s",
               reply && reply->str ? (int)(reply->len < 200 ? reply->len : 200) : 14,
               reply && reply->str ? reply->str : "unexpected reply");
    if (l->fail_closed) {
        res_backend(res);
    } else {
        local_check(l, &p->a, lim_now(l, (uint64_t)p->now), res);
        res->degraded = true;
    }
}

static void on_check_reply(void *ud, th_redis_status st, const th_redis_reply *reply)
{
    th_limit_call *k = ud;
    lim_pending *p = k->p;
    th_limiter *l = p->l;
    if (l == NULL) { /* the limiter is gone and the caller was answered then */
        free(k);
        return;
    }
    pending_unlink(l, p);
    th_limit_result res;
    int64_t v[6];
    bool ok = st == TH_REDIS_OK && parse_check_reply(reply, v);
    check_finish(l, p, ok ? v : NULL, st, reply, false, &res);
    th_limit_cb cb = p->cb;
    void *cud = p->ud;
    free(k);
    cb(cud, &res);
}

static void backend_error_now(th_limiter *l, const lim_args *a, uint64_t now_ms, th_limit_cb cb, void *ud)
{
    th_limit_result res;
    if (l->fail_closed) {
        res_backend(&res);
    } else {
        local_check(l, a, lim_now(l, now_ms), &res);
        res.degraded = true;
    }
    cb(ud, &res);
}

/* The call's pending state (in p, zeroed, with room for pending_strs(a) bytes after it): its arguments with
 * their own copies of the strings, and its member name. */
static size_t pending_strs(const lim_args *a)
{
    return strlen(a->ip) + strlen(a->tenant) + strlen(a->key_id) + 3;
}

static void pending_init(lim_pending *p, th_limiter *l, const lim_args *a, uint64_t now_ms, th_limit_cb cb,
                         void *ud)
{
    size_t ipn = strlen(a->ip), tn = strlen(a->tenant), kn = strlen(a->key_id);
    p->l = l;
    p->cb = cb;
    p->ud = ud;
    p->now = now_ms > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)now_ms;
    p->a = *a;
    memcpy(p->strs, a->ip, ipn + 1);
    memcpy(p->strs + ipn + 1, a->tenant, tn + 1);
    memcpy(p->strs + ipn + tn + 2, a->key_id, kn + 1);
    p->a.ip = p->strs;
    p->a.tenant = p->strs + ipn + 1;
    p->a.key_id = p->strs + ipn + tn + 2;
    /* "<hub id>:<sequence>" (16 + 1 + at most 20 bytes of the 48) */
    size_t hl = th_strlcpy(p->member, l->hub_id, sizeof l->hub_id);
    p->member[hl] = ':';
    th_u64_dec(p->member + hl + 1, (uint64_t)++l->seq);
}

/* ARGV: global, ip, tenant, key, conc, tconc, rate, burst, slot ttl (the profile), now, hub id */
static void call_args(th_limit_call *k, const th_limiter *l, const lim_pending *p, const int64_t lims[7],
                      int64_t burst)
{
    int64_t numv[10] = {lims[0], lims[1], lims[2], lims[4],        lims[5],
                        lims[6], lims[3], burst,   l->slot_ttl_ms, p->now};
    for (int i = 0; i < 10; i++) {
        k->argv[7 + i] = k->nums[i];
        k->lens[7 + i] = th_i64_dec(k->nums[i], numv[i]);
    }
    k->argv[17] = l->hub_id;
    k->lens[17] = strlen(l->hub_id);
}

static th_limit_call *call_build(th_limiter *l, const lim_args *a, uint64_t now_ms, th_limit_cb cb, void *ud)
{
    bool has_tenant = a->tenant[0] != '\0';
    int64_t burst = a->t_burst > 0 ? a->t_burst : a->t_rate;
    int64_t lims[7] = {
        l->global_rpm,
        a->ip[0] ? l->ip_rpm : 0,
        has_tenant ? a->t_rpm : 0,
        has_tenant ? a->t_rate : 0,
        a->key_id[0] ? a->key_rpm : 0,
        l->conc,
        has_tenant ? a->t_conc : 0,
    };
    static const char *const parts[7] = {
        "rl:w:g", "rl:w:ip:", "rl:w:t:", "rl:tb:", "rl:w:k:", "rl:h:g", "rl:h:t:"};
    const char *ids[7] = {"", a->ip, a->tenant, a->tenant, a->key_id, "", a->tenant};
    size_t plen = strlen(l->prefix), nstrs = pending_strs(a), nkeys = 0, partn[7], idn[7];
    for (int i = 0; i < 7; i++) {
        partn[i] = strlen(lims[i] > 0 ? parts[i] : "rl:unused");
        idn[i] = lims[i] > 0 ? strlen(ids[i]) : 0;
        nkeys += plen + partn[i] + idn[i] + 1;
    }
    th_limit_call *k = calloc(1, sizeof *k + sizeof(lim_pending) + nstrs + nkeys);
    if (k == NULL) return NULL;
    lim_pending *p = (lim_pending *)(void *)(k + 1);
    pending_init(p, l, a, now_ms, cb, ud);
    k->p = p;
    p->a.t_rpm = lims[2];
    p->a.t_rate = lims[3];
    p->a.t_conc = lims[6];
    p->a.key_rpm = lims[4];
    char *kb = p->strs + nstrs; /* the keys: prefix, part, id, NUL */
    for (int i = 0; i < 7; i++) {
        k->argv[i] = kb;
        k->lens[i] = plen + partn[i] + idn[i];
        memcpy(kb, l->prefix, plen);
        memcpy(kb + plen, lims[i] > 0 ? parts[i] : "rl:unused", partn[i]);
        memcpy(kb + plen + partn[i], ids[i], idn[i]);
        kb += k->lens[i];
        *kb++ = '\0';
    }
    call_args(k, l, p, lims, burst);
    return k;
}

static void redis_check(th_limiter *l, const lim_args *a, uint64_t now_ms, th_limit_cb cb, void *ud)
{
    if (l->redis == NULL) {
        backend_error_now(l, a, now_ms, cb, ud);
        return;
    }
    th_limit_call *k = call_build(l, a, now_ms, cb, ud);
    if (k == NULL) goto nomem;
    lim_pending *p = k->p;
    /* Linked before the call: the callback may run before th_redis_eval returns. */
    TH_DL_PUSH_FRONT(l->pending, p, prev, next);
    if (th_redis_eval(l->redis, on_check_reply, k, CHECK_LUA, 7, TH_LIMIT_CALL_ARGS, k->argv, k->lens) != 0) {
        pending_unlink(l, p);
        free(k);
        goto nomem;
    }
    return;
nomem:
    TH_LOG(l->log, TH_LOG_ERROR, "limiter: out of memory for a Redis check");
    backend_error_now(l, a, now_ms, cb, ud);
}

/* ---- API ------------------------------------------------------------------------------------------ */

void th_limit_check(th_limiter *l, const th_limit_req *req, uint64_t now_ms, th_limit_cb cb, void *ud)
{
    lim_args a;
    args_from_req(req, &a);
    if (l->use_redis) {
        redis_check(l, &a, now_ms, cb, ud);
        return;
    }
    th_limit_result res;
    local_check(l, &a, lim_now(l, now_ms), &res);
    cb(ud, &res);
}

void th_limit_release(th_limiter *l, th_limit_slot *slot)
{
    if (slot == NULL) return;
    th_limiter *owner = slot->l;
    if (owner != NULL) {
        TH_DL_UNLINK(owner->slots, slot, prev, next);
        owner->inflight--;
        if (slot->tenant != NULL) slot->tenant->inflight--;
        if (slot->redis) redis_release(owner, slot->redis_global_key, slot->redis_tenant_key, slot->member);
    }
    free(slot);
}

size_t th_limiter_ip_entries(const th_limiter *l)
{
    return l ? l->ips.n : 0;
}

const char *th_limiter_backend(const th_limiter *l)
{
    return l && l->use_redis ? "redis" : "local";
}

size_t th_limiter_inflight(const th_limiter *l)
{
    return l && l->inflight > 0 ? (size_t)l->inflight : 0;
}

void th_limiter_sweep(th_limiter *l, uint64_t now_ms)
{
    if (l == NULL) return;
    int64_t now = lim_now(l, now_ms);
    table_expire(&l->ips, now, l->ips.n + 1);
    table_expire(&l->tenants, now, l->tenants.n + 1);
    table_expire(&l->keys, now, l->keys.n + 1);
}

void th_limiter_free(th_limiter *l)
{
    if (l == NULL) return;
    /* Checks still waiting for Redis are answered now; their replies only free the record. */
    while (l->pending != NULL) {
        lim_pending *p = l->pending;
        pending_unlink(l, p);
        p->l = NULL;
        th_limit_result res;
        res_backend(&res);
        p->cb(p->ud, &res);
    }
    /* Slots still held stay valid: releasing them later only frees them. */
    for (th_limit_slot *s = l->slots; s != NULL;) {
        th_limit_slot *next = s->next;
        s->l = NULL;
        s->tenant = NULL;
        s->prev = s->next = NULL;
        s = next;
    }
    win_free(&l->gwin);
    table_free(&l->ips);
    table_free(&l->tenants);
    table_free(&l->keys);
    free(l->prefix);
    free(l);
}

/* ---- one round trip (governance/policy.c) ----------------------------------------------------------------
 */

const char *th_limit_lua_lib(void)
{
    static const char lib[] = LIM_LUA_LIB;
    return lib;
}

th_limit_call *th_limit_call_new(th_limiter *l, const th_limit_req *req, uint64_t now_ms)
{
    if (l == NULL || !l->use_redis || l->redis == NULL) return NULL;
    lim_args a;
    args_from_req(req, &a);
    return call_build(l, &a, now_ms, NULL, NULL);
}

void th_limit_call_args(const th_limit_call *k, const char *const **argv, const size_t **lens)
{
    *argv = k->argv;
    *lens = k->lens;
}

void th_limit_call_finish(th_limiter *l, th_limit_call *k, th_redis_status st, const th_redis_reply *reply,
                          bool slots_given_back, th_limit_result *res)
{
    int64_t v[6];
    bool ok = st == TH_REDIS_OK && parse_check_reply(reply, v);
    check_finish(l, k->p, ok ? v : NULL, st, ok ? NULL : reply, slots_given_back, res);
    th_limit_call_free(k);
}

void th_limit_call_free(th_limit_call *k)
{
    free(k); /* its pending state and keys are in the same block */
}

int th_limit_slot_detach(th_limit_slot *slot, const char **keys, size_t *keylens, const char **member)
{
    if (slot == NULL) return 0;
    th_limiter *owner = slot->l;
    int n = 0;
    if (owner != NULL) {
        TH_DL_UNLINK(owner->slots, slot, prev, next);
        owner->inflight--;
        if (slot->tenant != NULL) slot->tenant->inflight--;
        slot->l = NULL;
        slot->tenant = NULL;
        slot->prev = slot->next = NULL;
        if (slot->redis && owner->redis != NULL) {
            if (slot->redis_global_key != NULL) keys[n++] = slot->redis_global_key;
            if (slot->redis_tenant_key != NULL) keys[n++] = slot->redis_tenant_key;
            for (int i = 0; i < n; i++)
                keylens[i] = strlen(keys[i]);
        }
    }
    *member = slot->member;
    return n;
}

void th_limit_slot_free(th_limit_slot *slot)
{
    free(slot); /* its keys are in the same block */
}
