#!/usr/bin/env python3
"""Build step: turns a .sql file into a C file defining one string, so the
binary carries the exact SQL that operators can also read and run by hand.
usage: embed-sql.py INPUT.sql OUTPUT.c SYMBOL"""
import sys

src, out, sym = sys.argv[1:4]
with open(src, encoding="utf-8") as f:
    text = f.read()
# An array of bytes, not a string literal: C99 compilers need only accept
# literals of 4095 bytes (-Woverlength-strings), and the SQL is longer.
lines = ['/* Generated from %s by scripts/embed-sql.py: edit the .sql file. */'
         % src.split("/")[-1], "const char %s[] = {" % sym]
data = text.encode("utf-8") + b"\0"
for i in range(0, len(data), 16):
    lines.append("    " + " ".join("%d," % (b - 256 if b > 127 else b) for b in data[i:i + 16]))
lines.append("};")
with open(out, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
