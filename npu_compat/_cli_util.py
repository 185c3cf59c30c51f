"""Command-line helpers shared by ``npu-compat`` and its ``scan`` subcommand."""

import argparse
import sys


def one_line(text):
    """`text` with control characters escaped, so an error stays on one line."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in str(text))


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (and exit 2)."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {one_line(message)}\n")
        raise SystemExit(2)
