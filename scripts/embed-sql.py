#!/usr/bin/env python3
"""Build step: turns a .sql file into a C file defining one string, so the
binary carries the exact SQL that operators can also read and run by hand.
usage: embed-sql.py INPUT.sql OUTPUT.c SYMBOL"""
import sys

src, out, sym = sys.argv[1:4]
with open(src, encoding="utf-8") as f:
    text = f.read()
lines = ['/* Generated from %s by scripts/embed-sql.py: edit the .sql file. */'
         % src.split("/")[-1], "const char %s[] =" % sym]
for line in text.splitlines(keepends=True):
    lines.append('    "%s"' % line.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n"))
lines.append("    ;")
with open(out, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
