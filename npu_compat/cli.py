"""``npu-compat``: status, run, bootstrap-path, install, uninstall, scan, audit.

Every error is one line on stderr and a non-zero exit (2 for bad usage),
never a traceback.
"""

import argparse
import json
import os
import sys

from npu_compat._cli_util import OneLineParser, one_line

PROG = "npu-compat"


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
    sub.add_parser("audit", help="merge NPU_COMPAT_REPORT files into one view of the compile sites", add_help=False)
    return p


def _status(args):
    import npu_compat
    from npu_compat import info

    rep = info.build(import_targets=not args.no_import, cli=True)
    if args.json:
        print(json.dumps(rep, indent=2, default=str))
    else:
        print(info.format_text(rep))
    from npu_compat import core

    bad = {core.FAILED, core.INCOMPATIBLE, core.REPLACED, core.IMPORT_ERROR}
    return 1 if any(p["state"] in bad for p in rep["patches"]) and npu_compat.is_active() else 0


def _restore_signals():
    """Give the command the signal dispositions it would have had without Python in between.

    Python ignores SIGPIPE and SIGXFSZ at start-up (it turns them into
    exceptions), and exec keeps an ignored signal ignored: `yes | head -1`
    would print "Broken pipe" and exit 1 instead of dying quietly of SIGPIPE.
    Signals Python handles (SIGINT) are set back to the default too; exec
    would do that anyway.  A signal ignored before Python started (nohup's
    SIGHUP, SIGINT for a background job) is the caller's choice and stays
    ignored; SIGPIPE and SIGXFSZ always go back to the default, as with
    subprocess's restore_signals.
    """
    import signal

    for name in ("SIGPIPE", "SIGXFSZ", "SIGXFZ"):
        sig = getattr(signal, name, None)
        if sig is not None:
            try:
                signal.signal(sig, signal.SIG_DFL)
            except (OSError, ValueError):
                pass
    for sig in signal.valid_signals():
        try:
            if callable(signal.getsignal(sig)):  # a Python-level handler
                signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass


def _python_of(cmd, env):
    """(interpreter, its options) that `cmd` runs: cmd[0] itself or its script's #! line; (None, []) if no Python."""
    import re
    import shutil

    is_python = re.compile(r"(python|pypy)[0-9.]*$").match
    search = env.get("PATH", os.defpath)
    path = shutil.which(cmd[0], path=search)
    if path is None:
        return None, []
    if is_python(os.path.basename(path)):
        return path, cmd[1:]
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return None, []
    if not head.startswith(b"#!"):
        return None, []
    words = os.fsdecode(head[2:].split(b"\n", 1)[0]).split()
    if words and os.path.basename(words[0]) == "env":
        words = words[1:]
        while words and (words[0].startswith("-") or "=" in words[0]):  # env's own options and settings
            words = words[1:]
        if words:
            words[0] = shutil.which(words[0], path=search) or ""
    if words and words[0] and is_python(os.path.basename(words[0])):
        return words[0], words[1:]
    return None, []


def _isolating_option(options):
    """The first of -I, -E, -S among a Python command line's interpreter options, or None."""
    args = iter(options)
    for arg in args:
        if arg == "-" or arg == "--" or not arg.startswith("-"):
            return None  # the script (or stdin): interpreter options end
        if arg.startswith("--"):
            if arg == "--check-hash-based-pycs":
                next(args, None)
            continue
        for i, ch in enumerate(arg[1:], 1):
            if ch in "IES":
                return "-" + ch
            if ch in "cm":
                return None  # -c CODE / -m MODULE: options end
            if ch in "WX":
                if i == len(arg) - 1:
                    next(args, None)  # its value is the next argument
                break
    return None


def _can_import_npu_compat(python, env):
    """Whether `python` can import npu_compat under `env` (True when unsure: warn only when sure)."""
    import subprocess

    here = os.path.abspath(sys.executable)
    try:
        if os.path.dirname(os.path.abspath(python)) == os.path.dirname(here) and os.path.samefile(python, here):
            return True  # this very interpreter and environment
    except OSError:
        pass
    # One start of that interpreter, as the command itself would start it
    # (its own sitecustomize runs once more); only for another interpreter.
    probe_env = {k: v for k, v in env.items() if k != "NPU_COMPAT_ORIGIN"}
    probe_env["NPU_COMPAT_DISABLE"] = "1"  # import only: activate nothing, warn nothing
    try:
        proc = subprocess.run(
            [python, "-c", "import npu_compat"],
            env=probe_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):  # not startable, or too slow to tell: no warning
        return True
    return proc.returncode == 0


def _run(args):
    import npu_compat

    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        sys.stderr.write(f"{PROG} run: error: no command given (usage: {PROG} run -- COMMAND [ARGS...])\n")
        return 2
    env = npu_compat.child_env(os.environ, route="run")
    env[npu_compat.ORIGIN_VAR] = f"run:{os.getpid()}"  # exec keeps the pid: the command reports route "run"
    python, options = _python_of(cmd, env)
    option = _isolating_option(options) if python is not None else None
    if option is not None:
        why = "skips sitecustomize" if option == "-S" else "ignores PYTHONPATH"
        sys.stderr.write(
            f"{PROG} run: warning: the command's Python runs with {option}, which {why}, so npu-compat is not "
            "active in it; drop the option, or `import npu_compat` in the program\n"
        )
    elif python is not None and not _can_import_npu_compat(python, env):
        sys.stderr.write(
            f"{PROG} run: warning: {one_line(python)} cannot import npu_compat, so npu-compat is not active in "
            "this command; install npu-compat for that interpreter, or run the command with one that has it\n"
        )
    sys.stderr.flush()
    _restore_signals()
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

    def warn(message):
        sys.stderr.write(f"{PROG}: warning: {one_line(message)}\n")

    try:
        if action == "install":
            text = sitedir.install(site_dir, dry_run=args.dry_run, warn=warn)
            if args.dry_run:
                print(f"would write {os.path.join(site_dir, sitedir.NAME)}:\n{text}")
            else:
                print(f"installed {os.path.join(site_dir, sitedir.NAME)}")
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
        if argv[:1] == ["audit"]:
            from npu_compat import auditview

            return auditview.main(argv[1:])
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
