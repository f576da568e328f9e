#!/usr/bin/env python3
"""P6's client. Makes a deterministic English text of exactly --chars characters and times, in alternating rounds:
  hub:        one POST /api/generate with the whole text (the hub splits it and synthesises the pieces in parallel)
  sequential: the text split the way a client-side splitter does (sentence ends, each piece <= --max-chunk chars,
              greedy packing), each piece POSTed to the same hub one after another, the audio bytes concatenated.
Prints one JSON line per measurement: {"mode","wall_s","status","bytes","chunks"}; a non-200 stops the run.

usage: p6_client.py --port P [--chars 20000] [--max-chunk 4096] [--rounds 3] [--format mp3]
"""
import argparse
import http.client
import json
import random
import re
import sys
import time
import urllib.parse

WORDS = ("the quick brown fox jumps over a lazy dog while seven bright engineers measure every packet that "
         "crosses the busy network under a pale winter sky and nobody notices how quietly the servers hum "
         "through another long night of careful benchmarks").split()


def make_text(n, seed=1):
    rnd = random.Random(seed)
    out = []
    total = 0
    while total < n:
        k = rnd.randint(6, 28)
        s = " ".join(rnd.choice(WORDS) for _ in range(k))
        s = s[0].upper() + s[1:] + rnd.choice(".....!?")
        out.append(s)
        total += len(s) + 1
    text = " ".join(out)[:n]
    return text[:-1] + "."


def split_sentences(text, max_chunk):
    """ttsfm-style: split at sentence ends, pack greedily into pieces of at most max_chunk characters."""
    sentences = re.split(r"(?<=[.!?])\s+", text)
    pieces = []
    for s in sentences:  # a sentence longer than a chunk is cut at word boundaries
        while len(s) > max_chunk:
            cut = s.rfind(" ", 0, max_chunk + 1)
            cut = cut if cut > 0 else max_chunk
            pieces.append(s[:cut])
            s = s[cut:].lstrip()
        if s:
            pieces.append(s)
    chunks, cur = [], ""
    for s in pieces:
        if cur and len(cur) + 1 + len(s) > max_chunk:
            chunks.append(cur)
            cur = s
        else:
            cur = (cur + " " + s) if cur else s
    if cur:
        chunks.append(cur)
    return chunks


def post(port, text, fmt):
    body = urllib.parse.urlencode({"input": text, "voice": "alloy", "response_format": fmt})
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    c.request("POST", "/api/generate", body, {"Content-Type": "application/x-www-form-urlencoded"})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--chars", type=int, default=20000)
    ap.add_argument("--max-chunk", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--format", default="mp3")
    ap.add_argument("--probe", action="store_true", help="one untimed hub request (warm-up), then exit")
    ap.add_argument("--save-dir", default="", help="write the last round's audio of both modes here")
    a = ap.parse_args()
    text = make_text(a.chars)
    assert len(text) == a.chars, len(text)
    chunks = split_sentences(text, a.max_chunk)
    assert all(len(c) <= a.max_chunk for c in chunks)
    print(json.dumps({"mode": "info", "chars": len(text), "chunks": len(chunks),
                      "chunk_chars": [len(c) for c in chunks]}), flush=True)
    if a.probe:
        st, data = post(a.port, text, a.format)
        print(json.dumps({"mode": "probe", "status": st, "bytes": len(data)}), flush=True)
        sys.exit(0 if st == 200 else 1)
    for _ in range(a.rounds):
        t = time.monotonic()
        st, data = post(a.port, text, a.format)
        if a.save_dir:
            open(a.save_dir + "/hub." + a.format, "wb").write(data)
        print(json.dumps({"mode": "hub", "wall_s": round(time.monotonic() - t, 4), "status": st,
                          "bytes": len(data), "chunks": 1}), flush=True)
        if st != 200:
            print(data[:300].decode("utf-8", "replace"), file=sys.stderr)
            sys.exit(1)
        t = time.monotonic()
        audio, st = b"", 200
        for c in chunks:
            st, data = post(a.port, c, a.format)
            if st != 200:
                print(data[:300].decode("utf-8", "replace"), file=sys.stderr)
                break
            audio += data
        if a.save_dir:
            open(a.save_dir + "/sequential." + a.format, "wb").write(audio)
        print(json.dumps({"mode": "sequential", "wall_s": round(time.monotonic() - t, 4), "status": st,
                          "bytes": len(audio), "chunks": len(chunks)}), flush=True)
        if st != 200:
            sys.exit(1)


if __name__ == "__main__":
    main()
