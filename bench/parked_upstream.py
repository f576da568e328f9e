#!/usr/bin/env python3
"""P4's upstream: an asyncio HTTP/1.1 server that parks every request for DELAY seconds, then answers 200 with
a small MP3 (Content-Length, keep-alive). One port, big backlog. Prints `READY <port>`; on SIGTERM/SIGINT prints
`STATS {"requests":N,"answered":N,"max_inflight":N}` and exits.

usage: parked_upstream.py --port 0 --delay 2 --body FILE [--content-type audio/mpeg]
"""
import argparse
import asyncio
import json
import signal
import socket
import sys

stats = {"requests": 0, "answered": 0, "max_inflight": 0, "inflight": 0, "connections": 0}


async def handle(reader, writer, body, ctype, delay):
    stats["connections"] += 1
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            clen = 0
            chunked = False
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                k = k.strip().lower()
                if k == b"content-length":
                    clen = int(v.strip())
                elif k == b"transfer-encoding" and b"chunked" in v.lower():
                    chunked = True
            if chunked:  # read chunks to the terminating zero chunk
                while True:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    await reader.readexactly(size + 2)
                    if size == 0:
                        break
            elif clen:
                await reader.readexactly(clen)
            stats["requests"] += 1
            stats["inflight"] += 1
            stats["max_inflight"] = max(stats["max_inflight"], stats["inflight"])
            try:
                await asyncio.sleep(delay)
            finally:
                stats["inflight"] -= 1
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: " + ctype + b"\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\n\r\n" + body)
            await writer.drain()
            stats["answered"] += 1
    except (asyncio.IncompleteReadError, ConnectionError, ValueError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--delay", type=float, default=2.0)
    ap.add_argument("--body", required=True)
    ap.add_argument("--content-type", default="audio/mpeg")
    a = ap.parse_args()
    body = open(a.body, "rb").read()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", a.port))
    sock.listen(65535)
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, body, a.content_type.encode(), a.delay), sock=sock, backlog=65535)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    print("READY", sock.getsockname()[1], flush=True)
    await stop.wait()
    server.close()
    out = {k: stats[k] for k in ("requests", "answered", "max_inflight", "connections")}
    print("STATS", json.dumps(out), flush=True)
    sys.stdout.flush()
    import os
    os._exit(0)


if __name__ == "__main__":
    asyncio.run(main())
