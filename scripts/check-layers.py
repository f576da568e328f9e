#!/usr/bin/env python3
"""check-layers: fails on an #include that reaches a layer the including layer does not link.

The layers and what each may use are the th_layer(<folder> <layers>...) lines of CMakeLists.txt; a layer
may include its own headers and those of every layer it uses, directly or through another. src/main.c is
above all of them. Run by `make lint`."""
import os
import re
import sys

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
uses = {}
with open(os.path.join(root, "CMakeLists.txt"), encoding="utf-8") as f:
    for line in f:
        m = re.match(r"\s*th_layer\(([\w ]+)\)", line)
        if m:
            name, *deps = m.group(1).split()
            uses[name] = deps


def below(layer, seen=None):
    seen = set() if seen is None else seen
    for d in uses.get(layer, []):
        if d not in seen:
            seen.add(d)
            below(d, seen)
    return seen


bad = 0
src = os.path.join(root, "src")
for dirpath, _, files in os.walk(src):
    rel = os.path.relpath(dirpath, src)
    if rel == ".":
        continue
    layer = rel.split(os.sep)[0]
    if layer not in uses:
        print(f"src/{rel}: not a layer of CMakeLists.txt (add a th_layer line)")
        bad += 1
        continue
    allowed = below(layer) | {layer}
    for fn in sorted(files):
        if not fn.endswith((".c", ".h")):
            continue
        path = os.path.join(dirpath, fn)
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                m = re.match(r'\s*#\s*include\s+"([^/"]+)/', line)
                if m and m.group(1) not in allowed:
                    print(f"src/{rel}/{fn}:{n}: layer {layer} includes {m.group(1)}/, which is not below it")
                    bad += 1
sys.exit(1 if bad else 0)
