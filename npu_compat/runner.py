"""``npu-compat run``: exec a command with npu_compat active in it and in its Python children.

Modelled on ``ddtrace-run`` and ``python -m gevent.monkey``: the command
replaces this process (exec, not a child), so its exit status and signals
are its own.  The environment gets the bootstrap directory first on
PYTHONPATH; before exec, the command's interpreter is found (the command
itself or its script's ``#!`` line) to warn when npu_compat cannot be
active in it, and the signal dispositions Python changed are reset.
"""

import os
import sys

from npu_compat._cli_util import one_line

PROG = "npu-compat"


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


# The probe imports npu_compat as the bootstrap's sitecustomize does, before
# Python puts the current directory (the -c entry) first on sys.path: in a
# checkout of npu-compat, `import npu_compat` would otherwise find the
# checkout's copy, which the command's interpreter does not have at start-up.
PROBE = (
    "import sys\n"
    "if not getattr(sys.flags, 'safe_path', False): del sys.path[0]\n"
    "import npu_compat"
)


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
            [python, "-c", PROBE],
            env=probe_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):  # not startable, or too slow to tell: no warning
        return True
    return proc.returncode == 0


def run(cmd):
    """``npu-compat run -- COMMAND [ARGS...]``: exec COMMAND with npu_compat active; returns only on failure."""
    import npu_compat

    cmd = cmd[1:] if cmd[:1] == ["--"] else list(cmd)
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
