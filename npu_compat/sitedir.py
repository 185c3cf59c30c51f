"""``npu-compat install`` / ``uninstall``: a sitecustomize.py in a site directory.

For images that cannot change their environment.  The file written holds the
previous sitecustomize.py (if any) byte for byte, runs it after activating
npu_compat, and gives it back on uninstall.  Every change is one
``os.replace`` of a fully written, fsynced temporary file, so a crash leaves
either the old or the new file, never a mix; a stale temporary file is
removed by the next install or uninstall.  A temporary file is locked by its
writer (``flock``) until it is renamed, so a concurrent install never takes
another's for stale.  Each change also drops ``__pycache__/sitecustomize.*.pyc``:
a cache compiled with ``--invalidation-mode unchecked-hash`` would otherwise
keep running the old file.

Why ``sitecustomize.py`` and not an additive ``.pth`` file: see the notes
before ``install``.
"""

import base64
import errno
import hashlib
import os
import stat
import sys

NAME = "sitecustomize.py"
MARKER = "# npu-compat sitecustomize, format 1"
_TMP_PREFIX = ".npu-compat-"
_TMP_SUFFIX = ".tmp"

_TEMPLATE = '''{marker}: written by `npu-compat install`; undo with `npu-compat uninstall` (before `pip uninstall npu-compat`).
# npu-compat-checksum: {checksum}
"""Activates npu_compat, then runs the sitecustomize.py that was here before (kept below)."""

_NPU_COMPAT_PREVIOUS = {previous!r}
_NPU_COMPAT_PREVIOUS_MODE = {mode!r}


def _npu_compat_activate():
    try:
        import npu_compat
    except ImportError:
        return  # npu_compat was removed (`pip uninstall` before `npu-compat uninstall`): stay out of the way
    if not callable(getattr(npu_compat, "activate", None)):
        return  # only a leftover directory of it (a namespace package): the same
    try:
        npu_compat.activate(route="sitecustomize")
    except Exception as exc:
        import sys

        sys.stderr.write(f"npu_compat: activation failed: {{type(exc).__name__}}: {{exc}}\\n")


_npu_compat_activate()
if _NPU_COMPAT_PREVIOUS is not None:
    # The previous file runs as this module, under this file's name, as before.
    import base64 as _npu_compat_b64

    exec(compile(_npu_compat_b64.b64decode(_NPU_COMPAT_PREVIOUS), __file__, "exec"), globals())
    del _npu_compat_b64
'''


class Refused(Exception):
    """Install/uninstall will not proceed; the message says why. Nothing changed."""


def default_dir():
    import sysconfig

    return sysconfig.get_paths()["purelib"]


def _checksum(text):
    body = text.split("\n", 2)[2] if text.count("\n") >= 2 else ""
    return hashlib.sha256(body.encode()).hexdigest()


def render(previous, mode):
    """The sitecustomize.py text that chains to `previous` (bytes or None)."""
    prev = None if previous is None else base64.b64encode(previous).decode("ascii")
    text = _TEMPLATE.format(marker=MARKER, checksum="0" * 64, previous=prev, mode=mode)
    return text.replace("0" * 64, _checksum(text), 1)


def _parse(text):
    """Return (previous bytes or None, mode) from a file we wrote, or raise Refused."""
    lines = text.split("\n", 2)
    if not lines[0].startswith(MARKER) or len(lines) < 3 or not lines[1].startswith("# npu-compat-checksum: "):
        raise Refused("sitecustomize.py there was not written by npu-compat; leaving it alone")
    if lines[1].split(": ", 1)[1].strip() != _checksum(text):
        raise Refused("sitecustomize.py was edited after npu-compat wrote it; restore or remove it by hand")
    ns = {}
    for line in lines[2].splitlines():
        if line.startswith(("_NPU_COMPAT_PREVIOUS = ", "_NPU_COMPAT_PREVIOUS_MODE = ")):
            import ast

            name, _, value = line.partition(" = ")
            ns[name] = ast.literal_eval(value)
    prev = ns.get("_NPU_COMPAT_PREVIOUS")
    return (None if prev is None else base64.b64decode(prev)), ns.get("_NPU_COMPAT_PREVIOUS_MODE")


def _check_dir(site_dir, clean=True):
    if not os.path.isdir(site_dir):
        raise Refused(f"{site_dir} is not a directory")
    if not os.access(site_dir, os.W_OK | os.X_OK):
        raise Refused(f"{site_dir} is not writable")
    for entry in os.listdir(site_dir):
        # A package or a compiled module of that name would be imported instead.
        if entry == "sitecustomize" or (entry.startswith("sitecustomize.") and entry.endswith((".so", ".pyd", ".pyc"))):
            raise Refused(f"{os.path.join(site_dir, entry)} would compete with {NAME}; not touching it")
    if clean:  # never on a dry run: it changes nothing, not even a stale temporary file
        _clean_stale(site_dir)


def _clean_stale(site_dir):
    for entry in os.listdir(site_dir):
        if entry.startswith(_TMP_PREFIX) and entry.endswith(_TMP_SUFFIX):
            _remove_if_abandoned(os.path.join(site_dir, entry))


def _lock(fd, block):
    """flock `fd` exclusively: True if held, False if another holds it, None where locking is unsupported."""
    try:
        import fcntl
    except ImportError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
        return True
    except BlockingIOError:
        return False
    except OSError:
        return None


def _remove_if_abandoned(path):
    # A writer holds its temporary file locked until the rename: a file
    # nobody holds is left by a process that died.  Where locks are not
    # supported, only a file older than an hour is taken for stale.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        held = _lock(fd, block=False)
        if held is False:
            return
        if held is None:
            import time

            if time.time() - os.fstat(fd).st_mtime < 3600:
                return
        if os.stat(path).st_ino == os.fstat(fd).st_ino:  # still that file, not renamed meanwhile
            os.unlink(path)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_current(path):
    """(bytes, mode) of the current sitecustomize.py, (None, None) if absent; refuses odd files."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None, None
    if stat.S_ISLNK(st.st_mode):
        raise Refused(f"{path} is a symbolic link; npu-compat will not chain through it")
    if not stat.S_ISREG(st.st_mode):
        raise Refused(f"{path} is not a regular file")
    with open(path, "rb") as f:
        data = f.read()
    return data, stat.S_IMODE(st.st_mode)


def _new_temporary(site_dir):
    import tempfile

    for _ in range(10):
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=_TMP_SUFFIX, dir=site_dir)
        # Another install's clean-up may have taken it for stale before the
        # lock: then it is gone, and a new one is made.
        _lock(fd, block=True)
        if os.fstat(fd).st_nlink:
            return fd, tmp
        os.close(fd)
    raise OSError(errno.EAGAIN, "temporary files kept disappearing")


def _atomic_write(site_dir, data, mode):
    fd, tmp = _new_temporary(site_dir)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, mode)
            os.fsync(fd)
            os.replace(tmp, os.path.join(site_dir, NAME))
        finally:
            os.close(fd)  # only now: the lock tells other runs the file is in use
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _atomic_remove(site_dir):
    os.unlink(os.path.join(site_dir, NAME))


def plan_install(site_dir, clean=False):
    """Return the text install() would write, or raise Refused."""
    _check_dir(site_dir, clean)
    path = os.path.join(site_dir, NAME)
    data, mode = _read_current(path)
    if data is not None:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise Refused(f"{path} is not UTF-8 text; npu-compat cannot chain it safely") from None
        if text.startswith(MARKER):
            raise Refused(f"npu-compat is already installed in {path}")
        try:
            compile(data, path, "exec")
        except (SyntaxError, ValueError) as exc:
            raise Refused(f"{path} does not compile ({exc.__class__.__name__}); npu-compat cannot chain it") from None
    return render(data, mode)


# Why npu-compat owns sitecustomize.py rather than adding a ``<name>.pth``
# file (weighed for issue 11):
# - A .pth import line is deprecated by PEP 829 (accepted, Python 3.15):
#   silently ignored from 3.18.  Its successor, a ``<name>.start`` entry
#   point, is resolved by site.py, which reports a failure on stderr: left
#   behind when npu_compat is gone, it would print at every start, where
#   this file's own try/except stays silent.
# - site.py runs a .pth line while it is still adding site directories: one
#   in the user site runs before the system site-packages (where npu_compat
#   may be) is on sys.path.  sitecustomize runs after all of them.
# - .pth files are read only in site directories, sitecustomize.py in any
#   sys.path entry.  -S skips both; -I and -E skip neither.
# - Cost per start is the same (npu_compat's import and activation either
#   way; measured 20.1 ms vs 22.0 ms for the .pth, bare python 11.8 ms, on a
#   loaded 2-core machine).  Left behind by `pip uninstall`, either costs one
#   failed import per start; this file is written to stay silent then.
# - The price is the single slot: the previous file is kept byte for byte
#   and chained, compiled or packaged competitors are refused, a
#   sitecustomize earlier on sys.path is warned about.


def install(site_dir, dry_run=False, warn=None):
    """Write npu-compat's sitecustomize.py into site_dir.  Returns the text.

    `warn(message)` is told of anything that did not go as planned but
    changed nothing's correctness (a stale bytecode cache it could not drop).
    """
    text = plan_install(site_dir, clean=not dry_run)
    if not dry_run:
        _write(site_dir, text.encode("utf-8"), 0o644)
        _drop_bytecode(site_dir, warn)
    return text


def plan_uninstall(site_dir, clean=False):
    """Return the previous bytes (None: remove the file), or raise Refused."""
    _check_dir(site_dir, clean)
    path = os.path.join(site_dir, NAME)
    data, _ = _read_current(path)
    if data is None:
        raise Refused(f"npu-compat is not installed in {site_dir} (no {NAME})")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused(f"{path} was not written by npu-compat; leaving it alone") from None
    return _parse(text)


def uninstall(site_dir, dry_run=False, warn=None):
    """Put back what was there before install.  Returns the previous bytes or None."""
    previous, mode = plan_uninstall(site_dir, clean=not dry_run)
    if not dry_run:
        if previous is None:
            _atomic_remove(site_dir)
        else:
            _write(site_dir, previous, 0o644 if mode is None else mode)
        _drop_bytecode(site_dir, warn)
    return previous


def _drop_bytecode(site_dir, warn):
    # Bytecode caches of the file just replaced: derived data, never a
    # user's file (Python does not import a __pycache__ file without its
    # source).  One compiled with an unchecked hash is never compared with
    # its source, so it would go on running the old file.
    cache = os.path.join(site_dir, "__pycache__")
    try:
        names = os.listdir(cache)
    except OSError:
        return
    for entry in sorted(names):
        if entry.startswith("sitecustomize.") and entry.endswith(".pyc"):
            try:
                os.unlink(os.path.join(cache, entry))
            except FileNotFoundError:
                pass
            except OSError as exc:
                if warn is not None:
                    warn(f"could not remove the stale cache {os.path.join(cache, entry)}: {exc.strerror or exc}; remove it by hand")


def _write(site_dir, data, mode):
    try:
        _atomic_write(site_dir, data, mode)
    except OSError as exc:
        raise Refused(f"could not write {os.path.join(site_dir, NAME)}: {exc.strerror or exc}; nothing changed") from None


def _same_dir(a, b):
    return os.path.normcase(os.path.realpath(a or os.curdir)) == os.path.normcase(os.path.realpath(b or os.curdir))


def on_sys_path(site_dir):
    """Whether this interpreter would look for sitecustomize in site_dir at all."""
    return any(_same_dir(entry, site_dir) for entry in sys.path)


def shadowing(site_dir):
    """A sitecustomize earlier on sys.path that would run instead of site_dir's, or None.

    None too when site_dir is not on sys.path (on_sys_path() tells that).
    """
    from importlib.machinery import PathFinder

    if not on_sys_path(site_dir):
        return None
    for entry in sys.path:
        if _same_dir(entry, site_dir):
            return None
        spec = PathFinder.find_spec("sitecustomize", [entry or os.curdir])
        if spec is not None:
            return spec.origin
    return None
