"""``npu-compat scan``: the command line (argument parsing, output, exit status)."""

import argparse
import json
import os
import sys

from npu_compat import _cli_util
from npu_compat._cli_util import OneLineParser, one_line

from .diff import Diff, load_side
from .engine import scan
from .files import ScanError
from .render import report_table, diff_table
from .verdicts import FAIL_POLICIES, MEANING, VERDICTS

PROG = "npu-compat scan"

_EPILOG = "verdicts:\n" + "".join(
    "\n".join(_cli_util.wrap(MEANING[v], 80, first=f"  {v:<11} ", indent=" " * 14)) + "\n" for v in VERDICTS
) + """
--fail-on (each includes the ones before it; sites a default npu_compat
patch covers never fail, opt-in coverage does not exempt a site):
  unguarded    exit 1 on an unguarded site
  npu-backend  ... or an npu-backend site
  unknown      ... or an unknown site, or a file not read or parsed
  never        always exit 0 (the default)
With --diff, --fail-on applies only to what NEW adds or changes.

Sites under test/ and benchmark/ directories (sglang ships some) are
counted apart in the summary and marked "in_tests" in --json; --fail-on
counts them too unless --skip-tests leaves those directories out.

exit status: 0 fine, 1 --fail-on found something, 2 bad usage, a missing
PATH, a PATH with no Python file in it, a package that is not installed,
or an OLD/NEW that is not a report; 130 when interrupted (Ctrl-C).

examples:
  npu-compat scan                                  # the installed sglang
  npu-compat scan --fail-on unguarded path/to/sglang
  npu-compat scan --diff old-report.json path/to/new/sglang
"""


def _parser():
    p = OneLineParser(
        prog=PROG,
        description=(
            "List the torch.compile sites of a tree and whether NPU compiles them.\n\n"
            "Files are parsed, never imported.  Default: --package sglang.  Progress\n"
            "goes to stderr when it is a terminal."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help="files or directories to scan (recursing into *.py)")
    p.add_argument(
        "--package", action="append", metavar="NAME",
        help="scan an installed package, located on sys.path without importing it (repeatable)",
    )
    p.add_argument(
        "--diff", nargs=2, metavar=("OLD", "NEW"),
        help="compare two trees, installed versions' directories, or saved --json reports",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--fail-on", choices=FAIL_POLICIES, default="never",
        help="exit 1 when uncovered sites of this kind exist (see below); default: never",
    )
    p.add_argument(
        "--parse-all", action="store_true",
        help="parse every file, also those that cannot hold a site (slower; same sites and verdicts)",
    )
    p.add_argument(
        "--skip-tests", action="store_true",
        help="leave out test/, tests/, benchmark/ and benchmarks/ directories below each PATH or package",
    )
    _patch_options(p)
    return p


def _patch_options(p):
    g = p.add_argument_group("upstream patch (docs/audit.md)")
    g.add_argument(
        "--patch", metavar="PATH",
        help="print a unified diff adding disable=_is_npu at the selected sites of the sglang tree at PATH "
             "(default sites: the registry's default guards)",
    )
    g.add_argument("--site", action="append", metavar="MODULE:QUALNAME", help="patch this site (repeatable)")
    g.add_argument(
        "--from-audit", nargs="+", metavar="FILE",
        help="patch the sites that fell back, or that NPU_COMPAT_EAGER made eager, in these NPU_COMPAT_REPORT files",
    )
    g.add_argument(
        "--layout", choices=("repo", "installed"), default="repo",
        help="paths as in sglang's repository (python/sglang/..., for git apply; default) or relative to the "
             "directory holding sglang/ (installed; patch -p1 there)",
    )
    g.add_argument("--pr-text", action="store_true", help="print the pull request's description instead of the diff")


class _Progress:
    """``read 1234/4717 files`` on one line of a terminal's stderr, at most ten times a second; nothing elsewhere."""

    def __init__(self, stream):
        self.stream = stream if _isatty(stream) else None
        self.last = 0.0
        self.shown = False

    def __call__(self, stage, done, total):
        if self.stream is None:
            return
        import time

        now = time.monotonic()
        if done < total and now - self.last < 0.1:
            return
        self.last = now
        self.stream.write(f"\r{PROG}: {stage} {done}/{total} files\x1b[K")
        self.stream.flush()
        self.shown = True

    def clear(self):
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False


def _isatty(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def _interrupted(progress):
    progress.clear()
    if _cli_util.EXIT_AT_ONCE:
        try:
            sys.stdout.flush()
        except Exception:
            pass
        os._exit(130)
    return 130


def main(argv=None):
    """Entry point of ``npu-compat scan``; returns the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help or a usage error; argparse already printed
        return exc.code if isinstance(exc.code, int) else 2
    if args.patch is None and (args.site or args.from_audit or args.pr_text or args.layout != "repo"):
        parser.error("--site, --from-audit, --layout and --pr-text go with --patch PATH")
    if args.patch is not None:
        if args.paths or args.package or args.diff or args.json:
            parser.error("--patch PATH takes its tree itself; give no PATH, --package, --diff or --json with it")
        from .patch import run as patch

        return patch(args, PROG)
    if args.diff and (args.paths or args.package):
        parser.error("--diff takes its two sides itself; give no PATH or --package with it")
    progress = _Progress(sys.stderr)
    kw = dict(parse_all=args.parse_all, skip_tests=args.skip_tests, progress=progress)
    try:
        if args.diff:
            old, new = (load_side(a, scan, **kw) for a in args.diff)
            result = Diff(old, new, *args.diff)
            out = json.dumps(result.to_dict(), indent=2) if args.json else diff_table(result)
            registry_error = new.registry_error
        else:
            packages = args.package if args.package else ([] if args.paths else ["sglang"])
            result = scan(args.paths, packages=packages, **kw)
            out = json.dumps(result.to_dict(), indent=2) if args.json else report_table(result)
            registry_error = result.registry_error
        progress.clear()
    except ScanError as exc:
        progress.clear()
        print(f"{PROG}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return _interrupted(progress)
    except Exception:
        progress.clear()  # the caller's one-line error starts on a clean line
        raise
    if registry_error:
        print(f"{PROG}: warning: patch registry unavailable ({one_line(registry_error)})", file=sys.stderr)
    try:
        print(out)
        sys.stdout.flush()
    except BrokenPipeError:
        # `npu-compat scan | head`: the reader left; do not let the exit flush raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return result.exit_code(args.fail_on)


if __name__ == "__main__":
    _cli_util.EXIT_AT_ONCE = True
    sys.exit(main(sys.argv[1:]))
