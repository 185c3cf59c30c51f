"""``NPU_COMPAT_REPORT=PATH``: on NPU, each process appends one JSON line at exit.

The line is this process's record (``report_format`` 2: see docs/guards.md):
who it is (pid, host, ranks), each registry record's state and what NPU
compiled (:func:`npu_compat.core.compiles`).  Many ranks append to one file,
so the writer must never hurt the host or another rank's line:

* it never blocks: anything but a regular file (a FIFO whose reader left, a
  terminal, a device) is refused with one WARNING, and the file is opened
  with ``O_NONBLOCK``; the lock is waited for a bounded time only;
* it never leaves a partial line: the line is written under an exclusive
  ``flock``, and when the write falls short (a full disk, ``RLIMIT_FSIZE``)
  the file is truncated back to where the line began;
* a line left unterminated by someone else (a process killed mid-write)
  gets a newline first, so this record is never glued onto it;
* a relative path is resolved when the report is registered (activation
  on NPU), not at exit: a later ``chdir`` does not move the file.
"""

import os
import sys

from npu_compat import _log

VAR = "NPU_COMPAT_REPORT"
REPORT_FORMAT = 2
LOCK_WAIT_S = 10.0  # another rank holds the lock for one write; a stopped one must not hang us

# The first variable set (to an integer) wins: torchrun/torch.distributed,
# Open MPI, MPICH/Intel MPI (PMI), PMIx, SLURM.
RANK_VARS = {
    "rank": ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"),
    "local_rank": ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"),
    "world_size": ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS"),
}

_report_registered = None  # the absolute path registered for this process, or None


def _configured():
    return os.environ.get(VAR, "").strip()


def register_report():
    """Arrange for this process to append its record to NPU_COMPAT_REPORT at exit.

    The path is made absolute now.  Idempotent.
    """
    global _report_registered
    raw = _configured()
    if _report_registered is not None or not raw:
        return
    try:
        path = os.path.abspath(raw)
    except Exception as exc:  # the working directory is gone
        _log.warning("npu_compat: cannot resolve %s=%s: %s: %s", VAR, _log.short(raw), type(exc).__name__, exc)
        return
    import atexit

    atexit.register(write_report, path)
    _report_registered = path
    _log.debug("npu_compat: %s: this process appends its record to %s at exit", VAR, path)


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


def record():
    """This process's record: who it is, what npu_compat decided and what NPU compiled."""
    import npu_compat
    from npu_compat import core

    out = {
        "report_format": REPORT_FORMAT,
        "npu_compat": npu_compat.__version__,
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "argv": list(sys.argv[:4]),
        "route": npu_compat.route(),
        "host": _host(),
    }
    for field, names in RANK_VARS.items():
        out[field] = _int_env(names)
    out["patches"] = [{"name": s.name, "state": s.state} for s in npu_compat.status()]
    out["compiles"] = core.compiles()
    return out


def _refuse(path, why):
    _log.warning("npu_compat: not writing %s=%s: %s", VAR, _log.short(path), why)
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


def _open(path):
    import stat

    flags = os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags | os.O_RDWR, 0o644)  # read access: to see an unterminated last line
        readable = True
    except PermissionError:
        fd = os.open(path, flags | os.O_WRONLY, 0o644)
        readable = False
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced between the check and the open
        os.close(fd)
        return None, False
    return fd, readable


def write_report(path=None):
    """Append this process's record as one whole line to ``path``.  Never raises, never blocks.

    ``path`` defaults to the one registered, else NPU_COMPAT_REPORT made
    absolute.  Returns True when the line was written, False otherwise (with
    one WARNING saying why).
    """
    import stat

    path = path or _report_registered or _configured()
    if not path:
        return False
    try:
        path = os.path.abspath(path)
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None and not stat.S_ISREG(mode):
            return _refuse(path, "it is not a regular file (a FIFO, a device or a directory); name a file")
        import json

        line = (json.dumps(record(), default=str, sort_keys=True) + "\n").encode()
        fd, readable = _open(path)
        if fd is None:
            return _refuse(path, "it is not a regular file (a FIFO, a device or a directory); name a file")
        try:
            if _lock(fd) is False:
                return _refuse(path, f"another process held its lock for over {LOCK_WAIT_S:g} s")
            return _append(fd, path, line, readable)
        finally:
            os.close(fd)  # releases the lock
    except Exception as exc:
        _log.warning("npu_compat: cannot write %s=%s: %s: %s", VAR, _log.short(path), type(exc).__name__, exc)
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
