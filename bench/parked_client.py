#!/usr/bin/env python3
"""P4's client: opens N concurrent HTTP/1.1 connections to the hub and sends one POST /api/generate on each
(Connection: close), then waits for every answer. Two phases, so all N are in flight together however slow the
connects are: first every connection is opened (at most --connect-burst connects in progress at once; the hub's
listen backlog is 511), then, after a barrier, every request is written.
Prints one JSON line: {"n","ok","statuses":{...},"errors":{...},"connect_s","all_sent_s","wall_s","max_open",
"bytes_min","bytes_max"}; all_sent_s and wall_s count from the barrier.

usage: parked_client.py --port P --n 10000 [--timeout 60] [--connect-burst 256]
"""
import argparse
import asyncio
import json
import time

state = {"open": 0, "max_open": 0, "sent": 0}


def dechunk(b):
    out, i = bytearray(), 0
    while i < len(b):
        j = b.find(b"\r\n", i)
        if j < 0:
            break
        size = int(b[i:j].split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += b[j + 2:j + 2 + size]
        i = j + 2 + size + 2
    return bytes(out)


async def one(i, port, sem, deadline, statuses, errors, sizes, all_sent, connected, go):
    body = ("input=parked+request+%d&voice=alloy&response_format=mp3" % i).encode()
    req = (b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
           b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: "
           + str(len(body)).encode() + b"\r\n\r\n" + body)
    writer = None
    try:
        async with sem:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port),
                                                    max(0.1, deadline - time.monotonic()))
        connected["n"] += 1
        if connected["n"] == connected["want"]:
            connected["t"] = time.monotonic()
            go.set()
        await asyncio.wait_for(go.wait(), max(0.1, deadline - time.monotonic()))
        writer.write(req)
        await writer.drain()
        state["open"] += 1
        state["max_open"] = max(state["max_open"], state["open"])
        state["sent"] += 1
        if state["sent"] == all_sent["n"]:
            all_sent["t"] = time.monotonic()
        data = await asyncio.wait_for(reader.read(-1), max(0.1, deadline - time.monotonic()))
        state["open"] -= 1
        line = data.split(b"\r\n", 1)[0].split()
        code = line[1].decode() if len(line) > 1 else "none"
        statuses[code] = statuses.get(code, 0) + 1
        head, _, rest = data.partition(b"\r\n\r\n")
        if b"chunked" in head.lower():
            rest = dechunk(rest)
        sizes.append(len(rest))
    except Exception as e:  # noqa: BLE001 - every failure is counted by kind
        k = type(e).__name__
        if writer is None:  # a failed connect must not hold the barrier
            connected["want"] -= 1
            if connected["n"] >= connected["want"] and not go.is_set():
                connected["t"] = time.monotonic()
                go.set()
        errors[k] = errors.get(k, 0) + 1
    finally:
        if writer is not None:
            writer.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--timeout", type=float, default=60)
    ap.add_argument("--connect-burst", type=int, default=256)
    a = ap.parse_args()
    statuses, errors, sizes = {}, {}, []
    sem = asyncio.Semaphore(a.connect_burst)
    all_sent = {"n": a.n, "t": None}
    connected = {"n": 0, "want": a.n, "t": None}
    go = asyncio.Event()
    t00 = time.monotonic()
    deadline = t00 + a.timeout
    await asyncio.gather(*(one(i, a.port, sem, deadline, statuses, errors, sizes, all_sent, connected, go)
                           for i in range(a.n)))
    t1 = time.monotonic()
    t0 = connected["t"] or t00
    print(json.dumps({"n": a.n, "ok": statuses.get("200", 0), "statuses": statuses, "errors": errors,
                      "connect_s": round(t0 - t00, 3),
                      "all_sent_s": round(all_sent["t"] - t0, 3) if all_sent["t"] else None,
                      "wall_s": round(t1 - t0, 3), "max_open": state["max_open"],
                      "bytes_min": min(sizes) if sizes else 0, "bytes_max": max(sizes) if sizes else 0}))


if __name__ == "__main__":
    asyncio.run(main())
