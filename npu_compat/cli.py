"""``npu-compat``: status, run, bootstrap-path, install, uninstall, scan.

Every error is one line on stderr and a non-zero exit (2 for bad usage),
never a traceback.
"""

import argparse
import json
import os
import sys

PROG = "npu-compat"


def one_line(text):
    """`text` with control characters escaped, so an error stays on one line."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in str(text))


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (and exit 2)."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {one_line(message)}\n")
        raise SystemExit(2)


def _parser():
    p = OneLineParser(prog=PROG, description="Run sglang on Ascend NPU without torch.compile where NPU cannot take it.")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command", parser_class=OneLineParser, metavar="COMMAND")

    s = sub.add_parser("status", help="device detection, versions, activation and each patch's state")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.add_argument(
        "--no-import",
        action="store_true",
        help="do not import the target modules here (by default they are, so the patches are evaluated for real)",
    )

    r = sub.add_parser("run", help="run a command with npu_compat active in it and all its Python children")
    r.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")

    sub.add_parser("bootstrap-path", help="print the directory to put first on PYTHONPATH")

    for name, what in (("install", "write"), ("uninstall", "remove")):
        i = sub.add_parser(name, help=f"{what} npu-compat's sitecustomize.py in a site directory")
        i.add_argument("--site-dir", help="target directory (default: this interpreter's purelib)")
        i.add_argument("--dry-run", action="store_true", help="show what would change; change nothing")

    sub.add_parser("scan", help="list torch.compile sites and whether they are guarded for NPU", add_help=False)
    return p


def _status(args):
    import npu_compat
    from npu_compat import info

    rep = info.build(import_targets=not args.no_import)
    if args.json:
        print(json.dumps(rep, indent=2, default=str))
    else:
        print(info.format_text(rep))
    from npu_compat import core

    bad = {core.FAILED, core.INCOMPATIBLE, core.REPLACED, core.IMPORT_ERROR}
    return 1 if any(p["state"] in bad for p in rep["patches"]) and npu_compat.is_active() else 0


def _run(args):
    import npu_compat

    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        sys.stderr.write(f"{PROG} run: error: no command given (usage: {PROG} run -- COMMAND [ARGS...])\n")
        return 2
    env = npu_compat.child_env(os.environ, route="run")
    env[npu_compat.ORIGIN_VAR] = f"run:{os.getpid()}"  # exec keeps the pid: the command reports route "run"
    try:
        # exec, not a child: exit status and signals are the command's own,
        # and no shell ever parses the arguments.
        os.execvpe(cmd[0], cmd, env)
    except OSError as exc:
        sys.stderr.write(f"{PROG} run: error: cannot run {cmd[0]!r}: {one_line(exc.strerror or exc)}\n")
        return 127 if isinstance(exc, FileNotFoundError) else 126


def _sitedir(args, action):
    from npu_compat import sitedir

    site_dir = args.site_dir or sitedir.default_dir()
    try:
        if action == "install":
            text = sitedir.install(site_dir, dry_run=args.dry_run)
            if args.dry_run:
                print(f"would write {os.path.join(site_dir, sitedir.NAME)}:\n{text}")
            else:
                print(f"installed {os.path.join(site_dir, sitedir.NAME)}")
            shadow = sitedir.shadowing(site_dir)
            if shadow:
                sys.stderr.write(f"{PROG}: warning: {shadow} comes first on sys.path and would run instead\n")
        else:
            previous = sitedir.uninstall(site_dir, dry_run=args.dry_run)
            path = os.path.join(site_dir, sitedir.NAME)
            verb = "would " if args.dry_run else ""
            if previous is None:
                print(f"{verb}remove {path}")
            else:
                print(f"{verb}restore the previous {path} ({len(previous)} bytes)")
    except sitedir.Refused as exc:
        sys.stderr.write(f"{PROG} {action}: refused: {one_line(exc)}\n")
        return 1
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["scan"]:
            from npu_compat import scan

            return scan.main(argv[1:])
        args = _parser().parse_args(argv)
        if args.version:
            import npu_compat

            print(f"npu-compat {npu_compat.__version__}")
            return 0
        if args.command is None:
            _parser().print_help()
            return 2
        if args.command == "status":
            return _status(args)
        if args.command == "run":
            return _run(args)
        if args.command == "bootstrap-path":
            import npu_compat

            print(npu_compat.BOOTSTRAP_DIR)
            return 0
        return _sitedir(args, args.command)
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
    sys.exit(main())
