"""``npu-compat``: argument parsing and dispatch.

Each subcommand is one :class:`Command` in :data:`COMMANDS` (name, one-line
summary, example, its arguments, its handler); the work lives elsewhere
(:mod:`npu_compat.info`, :mod:`npu_compat.runner`, :mod:`npu_compat.sitedir`,
:mod:`npu_compat.scan`).  Every error is one line on stderr and a non-zero
exit (2 for bad usage), never a traceback.
"""

import argparse
import os
import sys

from npu_compat._cli_util import OneLineParser, one_line

PROG = "npu-compat"


class Command:
    """One subcommand: ``arguments(parser)`` adds its options, ``handler(args)`` returns the exit status.

    ``own_parser``: the command parses its own arguments (``handler(argv)``);
    its ``--help`` is its own too.
    """

    def __init__(self, name, summary, example, handler, arguments=None, description="", usage=None,
                 own_parser=False):  # fmt: skip
        self.name, self.summary, self.example = name, summary, example
        self.handler, self.arguments, self.description = handler, arguments, description
        self.usage, self.own_parser = usage, own_parser


# ---- handlers ----


def _status_args(p):
    p.add_argument("--json", action="store_true", help="print one JSON object (for machines)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="every record in full (target, reason, what is there now) and every compile seen")  # fmt: skip
    p.add_argument(
        "--no-import", action="store_true",
        help="import neither torch, sglang nor torch_npu: the answer rests on installed distributions, "
        "device files and this environment (fast; for health checks)",
    )


def _status(args):
    from npu_compat import info

    return info.main(no_import=args.no_import, as_json=args.json, verbose=args.verbose)


def _run_args(p):
    p.add_argument("cmd", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def _run(args):
    from npu_compat import runner

    return runner.run(args.cmd)


def _bootstrap_path(args):
    import npu_compat

    print(npu_compat.BOOTSTRAP_DIR)
    return 0


def _site_args(p):
    p.add_argument("--site-dir", help="target directory (default: this interpreter's purelib)")
    p.add_argument("--dry-run", action="store_true", help="show what would change; change nothing")


def _install(args):
    return _sitedir(args, "install")


def _uninstall(args):
    return _sitedir(args, "uninstall")


def _sitedir(args, action):
    from npu_compat import sitedir

    site_dir = args.site_dir or sitedir.default_dir()
    path = os.path.join(site_dir, sitedir.NAME)

    def warn(message):
        sys.stderr.write(f"{PROG}: warning: {one_line(message)}\n")

    try:
        if action == "install":
            text = sitedir.install(site_dir, dry_run=args.dry_run, warn=warn)
            if args.dry_run:
                print(f"would write {path}:\n{text}")
            else:
                print(f"installed {path}")
            shadow = sitedir.shadowing(site_dir)
            if shadow:
                warn(f"{shadow} comes first on sys.path and would run instead")
            if not sitedir.on_sys_path(site_dir):
                warn(
                    f"{site_dir} is not on sys.path of {sys.executable}, so Python never runs the file there; "
                    f"install into a directory on sys.path (default: {sitedir.default_dir()})"
                )
        else:
            previous = sitedir.uninstall(site_dir, dry_run=args.dry_run, warn=warn)
            if previous is None:
                print(f"would remove {path}" if args.dry_run else f"removed {path}")
            elif args.dry_run:
                print(f"would restore the previous {path} ({len(previous)} bytes)")
            else:
                print(f"restored the previous {path} ({len(previous)} bytes)")
    except sitedir.Refused as exc:
        sys.stderr.write(f"{PROG} {action}: refused: {one_line(exc)}\n")
        return 1
    return 0


def _scan(argv):
    from npu_compat import scan

    return scan.main(argv)


def _audit(argv):
    from npu_compat import auditview

    return auditview.main(argv)


# ---- the table: add a subcommand here ----

COMMANDS = [
    Command(
        "status", "show the device, versions, activation and each patch's state",
        "npu-compat status --no-import   # a health check: imports no torch",
        _status, _status_args,
        description="Without --no-import the installed target modules are imported here, so each patch's "
        "state is evaluated for real (this imports torch and sglang).  Exit 1 when a patch failed, is "
        "incompatible, was replaced or its module did not import.",
    ),
    Command(
        "run", "run a command with npu_compat active in it and in all its Python children",
        "npu-compat run -- python -m sglang.launch_server --model-path M --device npu",
        _run, _run_args, usage=f"{PROG} run [-h] -- COMMAND [ARGS...]",
        description="The command replaces this process (exec): its exit status and signals are its own.  "
        "Its environment gets npu_compat's bootstrap first on PYTHONPATH.",
    ),
    Command(
        "scan", "list the torch.compile sites of a tree and whether NPU compiles them",
        "npu-compat scan --fail-on unguarded path/to/sglang",
        _scan, own_parser=True,
    ),
    Command(
        "audit", "merge NPU_COMPAT_REPORT files of every process and node into one view of the compile sites",
        "npu-compat audit --fail-on fell-back /shared/npu-audit.jsonl",
        _audit, own_parser=True,
    ),
    Command(
        "install", "write npu-compat's sitecustomize.py into a site directory",
        "npu-compat install --dry-run",
        _install, _site_args,
        description="Every process of that interpreter then activates npu_compat at start-up, children "
        "included.  A sitecustomize.py already there is kept and still runs.",
    ),
    Command(
        "uninstall", "remove npu-compat's sitecustomize.py (putting back what was there before)",
        "npu-compat uninstall --dry-run",
        _uninstall, _site_args,
    ),
    Command(
        "bootstrap-path", "print the directory to put first on PYTHONPATH",
        'export PYTHONPATH="$(npu-compat bootstrap-path)${PYTHONPATH:+:$PYTHONPATH}"',
        _bootstrap_path,
    ),
    Command(
        "help", "show this help, or a command's (npu-compat help COMMAND)",
        "npu-compat help status",
        None, lambda p: p.add_argument("topic", nargs="?", metavar="COMMAND"),
    ),
]


def _command(name):
    return next((c for c in COMMANDS if c.name == name), None)


def _epilog():
    examples = "".join(f"  {c.example}\n" for c in COMMANDS if c.name != "help")
    return f"examples:\n{examples}\n`{PROG} COMMAND --help` describes each command."


def _parser():
    p = OneLineParser(
        prog=PROG,
        description="Run sglang on Ascend NPU without torch.compile where NPU cannot take it.",
        epilog=_epilog(),
        formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, max_help_position=22),
    )
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command", parser_class=OneLineParser, metavar="COMMAND", title="commands")
    for c in COMMANDS:
        description = c.summary[0].upper() + c.summary[1:] + "." + (f"\n\n{c.description}" if c.description else "")
        s = sub.add_parser(
            c.name, help=c.summary, add_help=not c.own_parser, usage=c.usage,
            description=_wrap(description), epilog=f"example:\n  {c.example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if c.arguments is not None:
            c.arguments(s)
    return p, sub


def _wrap(text):
    import textwrap

    return "\n\n".join(textwrap.fill(par, 78) for par in text.split("\n\n"))


def _help(topic):
    parser, sub = _parser()
    if topic is None:
        parser.print_help()
        return 0
    c = _command(topic)
    if c is None:
        names = ", ".join(c.name for c in COMMANDS)
        sys.stderr.write(f"{PROG} help: error: no command {one_line(topic)!r} (choose from {names})\n")
        return 2
    if c.own_parser:
        return c.handler(["--help"])
    sub.choices[topic].print_help()
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        own = _command(argv[0]) if argv else None
        if own is not None and own.own_parser:
            return own.handler(argv[1:])
        parser, _ = _parser()
        args = parser.parse_args(argv)
        if args.version:
            import npu_compat

            print(f"npu-compat {npu_compat.__version__}")
            return 0
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        if args.command == "help":
            return _help(args.topic)
        return _command(args.command).handler(args)
    except SystemExit as exc:  # argparse: usage errors (2) and --help (0)
        return exc.code if isinstance(exc.code, int) else 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug of ours: still one line, not a traceback
        sys.stderr.write(f"{PROG}: error: {type(exc).__name__}: {one_line(exc)}\n")
        return 1


def entry():
    from npu_compat import _cli_util

    _cli_util.EXIT_AT_ONCE = True  # a Ctrl-C in a scan ends the process at once
    sys.exit(main())
