"""``NPU_COMPAT_REPORT=PATH``: on NPU, each process appends its record as things happen.

A line is this process's whole record at that moment (``report_format`` 3:
see docs/guards.md): who it is (host, pid and start time, which together
name one process even when pids are reused; ranks), each registry record's
state and what NPU compiled.  A new line is written when the audit's answer
changes: at activation, when a site is compiled or made eager, first runs or
falls back (:data:`npu_compat.audit.audit` calls :func:`changed`), and one
last line at exit (``"exit": true``).  ``npu-compat audit`` keeps each
process's latest line, so a process sglang ends with SIGKILL (no exit
handler runs) still shows what it did up to its last write.

Cheap and bounded:

* :func:`changed` only marks the state dirty and wakes a writer thread: no
  file is touched on the caller's path, and nothing is called per call of a
  compiled site after its first;
* the writer waits ``SETTLE_S`` after a change (a burst of changes, a model's
  sites at import, becomes one line) and writes at most one line every
  ``MIN_GAP_S``; it ends after ``IDLE_S`` without a change (a server that
  has warmed up keeps no thread), and starts again on the next change.

Many ranks append to one file, often in a shared directory, so the writer
must never hurt the host, another rank's line, or another user:

* it never blocks: anything but a regular file (a FIFO whose reader left, a
  terminal, a device) is refused with one WARNING, and the file is opened
  with ``O_NONBLOCK``; the lock is waited for a bounded time only;
* it never follows a symbolic link (``O_NOFOLLOW``): another user's link in
  a shared directory cannot make this process append to a file of its own;
* a file it creates is readable by its owner only (0600); a file that
  exists keeps its mode;
* it never leaves a partial line: the line is written under an exclusive
  ``flock``, and when the write falls short (a full disk, ``RLIMIT_FSIZE``)
  the file is truncated back to where the line began;
* a line left unterminated by someone else (a process killed mid-write)
  gets a newline first, so this record is never glued onto it;
* a relative path is resolved when the report is registered (activation
  on NPU), not later: a ``chdir`` does not move the file;
* no command-line option values are recorded (they may hold secrets such as
  ``--api-key``): the program and its entry (``-m MODULE``, ``-c``, or the
  script) only.

This module knows nothing of the rest of npu_compat: :mod:`npu_compat.core`
hands it the function that returns the process's state
(:func:`register_report`) and adds :func:`changed` to the audit's listeners.
"""

import os
import sys
import threading

from npu_compat import _log

VAR = "NPU_COMPAT_REPORT"
REPORT_FORMAT = 3
LOCK_WAIT_S = 10.0  # another rank holds the lock for one write; a stopped one must not hang us
SETTLE_S = 0.1  # after a change, wait this long: the rest of a burst goes into the same line
MIN_GAP_S = 0.5  # at most one line per this many seconds while changes keep coming
IDLE_S = 5.0  # the writer thread ends after this long without a change

# The first variable set (to an integer) wins: torchrun/torch.distributed,
# Open MPI, MPICH/Intel MPI (PMI), PMIx, SLURM.
RANK_VARS = {
    "rank": ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"),
    "local_rank": ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"),
    "world_size": ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS"),
}

_report_registered = None  # the absolute path registered for this process, or None
_state_fn = None  # core's function: {"npu_compat", "route", "patches", "compiles"}


class _Writer:
    """This process's writer state (made anew in a forked child)."""

    def __init__(self):
        self.lock = threading.Lock()  # one write at a time in this process
        self.start_lock = threading.Lock()  # starting and ending the thread
        self.wake = threading.Event()
        self.thread = None
        self.dirty = False
        self.closed = False  # the exit line is written: nothing after it
        self.seq = 0
        self.last = None  # time.monotonic() of the last write
        self.identity = None  # (pid, start)
        self.lines = 0  # lines written (for the measurements and tests)


_w = _Writer()


def _forked():
    global _w
    old = _w
    _w = _Writer()
    _w.dirty, _w.closed = old.dirty, old.closed


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


def _configured():
    return os.environ.get(VAR, "").strip()


def register_report(state_fn):
    """Arrange for this process to append its record to NPU_COMPAT_REPORT as things change and at exit.

    ``state_fn()`` returns the process's state (``npu_compat``, ``route``,
    ``patches``, ``compiles``).  The path is made absolute now.  Returns True
    when this call registered the report (the caller then sends changes to
    :func:`changed`); False when it was registered already or is not set.
    """
    global _report_registered, _state_fn
    raw = _configured()
    if _report_registered is not None or not raw:
        return False
    try:
        path = os.path.abspath(raw)
    except Exception as exc:  # the working directory is gone
        _log.warning("npu_compat: cannot resolve %s=%s: %s: %s", VAR, _log.short(raw), type(exc).__name__, exc)
        return False
    import atexit

    _state_fn = state_fn
    atexit.register(_at_exit)
    _report_registered = path
    _log.debug("npu_compat: %s: this process appends its record to %s as it changes and at exit", VAR, path)
    changed()  # activation is a change
    return True


def changed(entry=None):
    """The audit's answer changed: a line follows within about SETTLE_S (MIN_GAP_S after the last).

    Cheap: sets a flag and wakes the writer thread (started when none runs).
    Never raises, never touches the file.
    """
    w = _w
    if _report_registered is None or w.closed:
        return
    w.dirty = True
    try:
        with w.start_lock:
            w.wake.set()
            if w.thread is None:
                t = threading.Thread(target=_run, args=(w,), name="npu-compat-report", daemon=True)
                t.start()
                w.thread = t
    except Exception:  # no thread at interpreter shutdown: the exit line carries it
        pass


def _run(w):
    import time

    while True:
        if not w.wake.wait(IDLE_S):
            with w.start_lock:
                if not w.wake.is_set():
                    w.thread = None  # idle: changed() starts another
                    return
        if w.closed:
            return
        time.sleep(SETTLE_S)
        if w.last is not None:
            time.sleep(max(0.0, w.last + MIN_GAP_S - time.monotonic()))
        w.wake.clear()
        if w.closed:
            return
        _flush(w, exit=False)


def _flush(w, exit):
    """Write one line if the state changed (always at exit).  True when a line was written."""
    import time

    if not w.lock.acquire(timeout=LOCK_WAIT_S + 1):
        return False
    try:
        if w.closed or not (w.dirty or exit):
            return False
        w.dirty = False  # a change from here on makes another line
        if exit:
            w.closed = True
        w.seq += 1
        ok = write_report(_report_registered, exit=exit, seq=w.seq)
        w.last = time.monotonic()
        w.lines += ok
        return ok
    finally:
        w.lock.release()


def _at_exit():
    w = _w
    w.wake.set()  # a waiting writer thread ends
    _flush(w, exit=True)


def flush():
    """Write a line now if the state changed since the last (tests, and anyone about to stop)."""
    if _report_registered is None:
        return False
    return _flush(_w, exit=False)


def _int_env(names):
    for name in names:
        try:
            return int(os.environ[name].strip())
        except (KeyError, ValueError):
            continue
    return None


def _host():
    try:
        import socket

        return socket.gethostname()
    except Exception:
        return None


def _start_time():
    """When this process started, in seconds since the epoch (from /proc; else the first time asked)."""
    try:
        with open("/proc/self/stat", "rb") as f:
            ticks = int(f.read().rpartition(b")")[2].split()[19])  # field 22: starttime, clock ticks after boot
        with open("/proc/stat", "rb") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith(b"btime "))
        return round(btime + ticks / os.sysconf("SC_CLK_TCK"), 2)
    except Exception:
        import time

        return round(time.time(), 2)


def _identity():
    pid = os.getpid()
    w = _w
    if w.identity is None or w.identity[0] != pid:
        w.identity = (pid, _start_time())
    return w.identity


def program():
    """The program and its entry, never an option value: ``[python, "-m", "sglang.launch_server"]``."""
    orig = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    exe, args = (orig[0] if orig else "?"), orig[1:]
    i = 0
    while i < len(args):
        a = args[i]
        if a == "-m":
            return [exe, "-m", args[i + 1]] if i + 1 < len(args) else [exe, "-m"]
        if a.startswith("-m"):
            return [exe, "-m", a[2:]]
        if a.startswith("-c"):
            return [exe, "-c"]
        if a in ("-X", "-W", "--check-hash-based-pycs"):
            i += 2  # an interpreter option with a value: skip both
            continue
        if a == "-" or not a.startswith("-"):
            return [exe, a]  # a script (or stdin)
        i += 1
    return [exe]


def record(exit=False, seq=0):
    """This process's record: who it is, what npu_compat decided and what NPU compiled."""
    import time

    pid, start = _identity()
    out = {
        "report_format": REPORT_FORMAT,
        "pid": pid,
        "ppid": os.getppid(),
        "start": start,
        "seq": seq,
        "exit": bool(exit),
        "time": round(time.time(), 3),
        "argv": program(),
        "host": _host(),
    }
    for field, names in RANK_VARS.items():
        out[field] = _int_env(names)
    state = _state_fn() if _state_fn is not None else {}
    for key in ("npu_compat", "route", "patches", "compiles"):
        out[key] = state.get(key, [] if key in ("patches", "compiles") else None)
    return out


def _refuse(path, why):
    _log.warning_once(("report", path, why), "npu_compat: not writing %s=%s: %s", VAR, _log.short(path, 300), why)
    return False


def _lock(fd):
    """Take an exclusive flock within LOCK_WAIT_S: True, False (timed out), None (no flock here)."""
    try:
        import fcntl
    except ImportError:
        return None
    import time

    end = time.monotonic() + LOCK_WAIT_S
    pause = 0.001
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > end:
                return False
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
        except OSError:
            return None  # a file system without flock: write unlocked, as O_APPEND allows


NOT_REGULAR = "it is not a regular file (a FIFO, a device or a directory); name a file"
A_LINK = "it is a symbolic link, and the report never follows one (name the file itself)"


def _open(path):
    import errno
    import stat

    flags = os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        try:
            # 0600: a report this process creates is its owner's only (umask can only narrow it);
            # read access: to see an unterminated last line
            fd = os.open(path, flags | os.O_RDWR, 0o600)
            readable = True
        except PermissionError:
            fd = os.open(path, flags | os.O_WRONLY, 0o600)
            readable = False
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a link (made between the check and the open)
            return None, A_LINK
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced between the check and the open
        os.close(fd)
        return None, NOT_REGULAR
    return fd, readable


def write_report(path=None, exit=False, seq=0):
    """Append this process's record as one whole line to ``path``.  Never raises, never blocks.

    ``path`` defaults to the one registered, else NPU_COMPAT_REPORT made
    absolute.  Returns True when the line was written, False otherwise (with
    one WARNING per path and reason saying why).
    """
    import stat

    path = path or _report_registered or _configured()
    if not path:
        return False
    try:
        path = os.path.abspath(path)
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None and stat.S_ISLNK(mode):
            return _refuse(path, A_LINK)
        if mode is not None and not stat.S_ISREG(mode):
            return _refuse(path, NOT_REGULAR)
        import json

        line = (json.dumps(record(exit, seq), default=str, sort_keys=True) + "\n").encode()
        fd, readable = _open(path)
        if fd is None:
            return _refuse(path, readable)
        try:
            if _lock(fd) is False:
                return _refuse(path, f"another process held its lock for over {LOCK_WAIT_S:g} s")
            return _append(fd, path, line, readable)
        finally:
            os.close(fd)  # releases the lock
    except Exception as exc:
        _log.warning_once(("report", path, type(exc).__name__), "npu_compat: cannot write %s=%s: %s: %s", VAR,
                          _log.short(path, 300), type(exc).__name__, exc)  # fmt: skip
        return False


def _append(fd, path, line, readable):
    start = os.fstat(fd).st_size  # under the lock: where this line begins (O_APPEND writes there)
    if start and readable and os.pread(fd, 1, start - 1) != b"\n":
        line = b"\n" + line  # someone else's torn line: do not glue this record onto it
    view = memoryview(line)
    error = None
    written = 0
    while view:
        try:
            n = os.write(fd, view)
        except OSError as exc:  # EFBIG past RLIMIT_FSIZE (SIGXFSZ is ignored by Python), ENOSPC, EIO
            error = f"{type(exc).__name__}: {exc}"
            break
        if n <= 0:
            error = "the write made no progress"
            break
        view = view[n:]
        written += n
    if error is None:
        return True
    try:
        if os.fstat(fd).st_size != start + written:  # someone wrote after us (no flock here)
            raise OSError("the file grew meanwhile")
        os.ftruncate(fd, start)  # nothing of this line stays behind
        undone = "nothing of it was left in the file"
    except OSError as exc:
        undone = f"and truncating back failed ({type(exc).__name__}: {exc})"
    return _refuse(path, f"the line could not be written whole ({error}); {undone}")
