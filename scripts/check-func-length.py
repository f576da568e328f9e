#!/usr/bin/env python3
"""check-func-length: fails on a C function in src/ longer than 80 lines that is not in the allowlist.

A function is found by a brace-matching scan: a line at column 0 that opens a body ("{" alone after a
signature) up to the matching "}" at column 0. Comments, strings and character literals are skipped
when counting braces. The length is the number of lines from the signature's first line to the closing
brace. scripts/func-length-allow.txt lists the exceptions, one "path:function" a line, each with a
comment saying why (a table, a flat switch). Run by `make lint`; `--all` prints every function over the
limit, allowed or not."""
import os
import re
import sys

LIMIT = 80
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
allow_file = os.path.join(root, "scripts", "func-length-allow.txt")


def load_allow():
    allow = {}
    with open(allow_file, encoding="utf-8") as f:
        reason = ""
        for line in f:
            s = line.strip()
            if not s:
                reason = ""
                continue
            if s.startswith("#"):
                reason = s[1:].strip()
                continue
            key = s.split()[0]
            if not reason:
                print(f"scripts/func-length-allow.txt: {key}: no comment saying why")
                sys.exit(1)
            allow[key] = reason
    return allow


def strip_code(text):
    """The text with comments, strings and character literals blanked (newlines kept)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif ch in "\"'":
            j = i + 1
            while j < n and text[j] != ch:
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def functions(path):
    with open(path, encoding="utf-8") as f:
        raw = f.read()
    lines = strip_code(raw).split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("{") and i > 0:
            # the signature: back to the line after the previous blank / ';' / '}' line
            j = i - 1
            while j > 0 and lines[j - 1].strip() and not lines[j - 1].rstrip().endswith((";", "}", "*/")) \
                    and not lines[j - 1].startswith("#"):
                j -= 1
            sig = " ".join(l.strip() for l in lines[j:i])
            m = re.search(r"(\w+)\s*\([^()]*(\([^()]*\)[^()]*)*\)\s*(__attribute__.*)?$", sig)
            depth = 0
            k = i
            while k < len(lines):
                depth += lines[k].count("{") - lines[k].count("}")
                if depth == 0:
                    break
                k += 1
            if m and "=" not in sig.split("(")[0]:
                yield m.group(1), j + 1, k - j + 1
            i = k + 1
        else:
            i += 1


def main():
    allow = load_allow()
    show_all = "--all" in sys.argv
    bad = 0
    seen = set()
    for dirpath, _, files in os.walk(os.path.join(root, "src")):
        for fn in sorted(files):
            if not fn.endswith(".c"):
                continue
            path = os.path.join(dirpath, fn)
            rel = os.path.relpath(path, root)
            for name, line, length in functions(path):
                key = f"{rel}:{name}"
                if length <= LIMIT:
                    continue
                seen.add(key)
                if key in allow:
                    if show_all:
                        print(f"{rel}:{line}: {name} is {length} lines (allowed: {allow[key]})")
                    continue
                print(f"{rel}:{line}: {name} is {length} lines (more than {LIMIT}): cut it into steps")
                bad += 1
    for key in sorted(set(allow) - seen):
        print(f"scripts/func-length-allow.txt: {key} is no longer over {LIMIT} lines: remove it")
        bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
