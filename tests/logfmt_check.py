#!/usr/bin/env python3
"""Checks every log line the integration tests made rinetd write (one file per daemon in
LOGDIR, written by tests/integration/harness.rs when RINETD_TEST_LOGS is set):

- each line parses as logfmt with the `logfmt` package from PyPI, every token after the event's
  words being a key=value pair (an unquoted space in a value would leave stray bare words);
- each line has one of the shapes listed in docs/log-events.md ("Every shape"), so that page
  says exactly what rinetd writes.

Usage: tests/logfmt_check.py LOGDIR docs/log-events.md
"""

import pathlib
import re
import sys

import logfmt

VALUE = r'(?:"(?:[^"\\]|\\.)*"|[^\s"=]+)'
SERVICE = r"[A-Za-z0-9][A-Za-z0-9._-]*/(?:tcp|udp|unix|none)"
PREFIX = r"rinetd: (?:warning: |error: )?"


def shape_regex(shape):
    """A shape line of the docs as a regular expression for a whole message."""
    out = []
    i = 0
    while i < len(shape):
        c = shape[i]
        if c == "<":
            end = shape.index(">", i)
            name = shape[i + 1 : end]
            out.append(SERVICE if name == "service" else VALUE)
            i = end + 1
        elif c == "[":
            out.append("(?:")
            i += 1
        elif c == "]":
            out.append(")?")
            i += 1
        elif c == "{":
            out.append("(?:")
            i += 1
        elif c == "}":
            out.append(")*")
            i += 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile(PREFIX + "".join(out))


def shapes(doc):
    text = pathlib.Path(doc).read_text()
    block = re.search(r"```shapes\n(.*?)```", text, re.S)
    if not block:
        sys.exit(f"{doc}: no ```shapes block")
    return [(line, shape_regex(line)) for line in block.group(1).splitlines() if line.strip()]


def stray_words(line):
    """Bare words after the first key=value pair: a value that should have been quoted."""
    pairs = list(logfmt.parse_line(line).items())
    seen_value = False
    for key, value in pairs:
        if value is True:
            if seen_value:
                return key
        else:
            seen_value = True
    return None


def main():
    logdir, doc = sys.argv[1], sys.argv[2]
    known = shapes(doc)
    files = sorted(pathlib.Path(logdir).glob("*.log"))
    if not files:
        sys.exit(f"{logdir}: no log files: were the integration tests run with RINETD_TEST_LOGS?")
    lines = bad = 0
    used = set()
    for path in files:
        for line in path.read_text(errors="replace").splitlines():
            lines += 1
            problem = None
            word = stray_words(line)
            if word is not None:
                problem = f"not logfmt: stray word {word!r}"
            else:
                match = next((s for s, r in known if r.fullmatch(line)), None)
                if match is None:
                    problem = "has no shape listed in " + doc
                else:
                    used.add(match)
            if problem:
                bad += 1
                if bad <= 20:
                    print(f"{path.name}: {problem}:\n    {line}")
    print(f"logfmt check: {lines} lines from {len(files)} daemons, {bad} bad; "
          f"{len(used)} of {len(known)} documented shapes seen")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
