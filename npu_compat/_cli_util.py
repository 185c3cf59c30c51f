"""Command-line helpers shared by ``npu-compat`` and its ``scan`` subcommand."""

import argparse
import re
import sys


# Set by the command-line entry points: a Ctrl-C in a long scan then ends
# the process at once (os._exit(130)) instead of first freeing the millions
# of objects the scan made (seen taking seconds).  Never set when a program
# calls main() in process.
EXIT_AT_ONCE = False


def one_line(text):
    """`text` with control characters escaped, so an error stays on one line."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in str(text))


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (and exit 2)."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {one_line(message)}\n")
        raise SystemExit(2)


def _pieces(word, width):
    """``word`` cut after '/' or '.' into pieces of at most ``width`` (a piece with no such cut stays whole)."""
    out, cur = [], ""
    for part in re.split(r"(?<=[/.])", word):
        if cur and len(cur) + len(part) > width:
            out.append(cur)
            cur = ""
        cur += part
    return out + [cur] if cur else out


def wrap(text, width=80, first=None, indent=""):
    """``text`` as lines of at most ``width`` columns: ``first`` (default ``indent``) starts the first line,
    ``indent`` the others.  A path or dotted name too long for a line is cut after a '/' or '.';
    only a part with no such cut may stay longer than ``width``."""
    first = indent if first is None else first
    lines, cur, lead = [], first, first
    for word in str(text).split():
        sep = "" if cur == lead else " "
        if len(cur) + len(sep) + len(word) <= width:
            cur += sep + word
            continue
        if cur != lead:
            lines.append(cur)
            cur = lead = indent
        if len(cur) + len(word) <= width:
            cur += word
            continue
        pieces = _pieces(word, width - len(indent))
        for piece in pieces[:-1]:
            lines.append(cur + piece)
            cur = lead = indent
        cur += pieces[-1]
    lines.append(cur)
    return lines
