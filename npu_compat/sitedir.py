"""``npu-compat install`` / ``uninstall``: a sitecustomize.py in a site directory.

For images that cannot change their environment.  The file written holds the
previous sitecustomize.py (if any) byte for byte, runs it after activating
npu_compat, and gives it back on uninstall.  Every change is one
``os.replace`` of a fully written, fsynced temporary file, so a crash leaves
either the old or the new file, never a mix; a stale temporary file is
removed by the next install or uninstall.
"""

import base64
import hashlib
import os
import stat
import sys

NAME = "sitecustomize.py"
MARKER = "# npu-compat sitecustomize, format 1"
_TMP_PREFIX = ".npu-compat-"
_TMP_SUFFIX = ".tmp"

_TEMPLATE = '''{marker}: written by `npu-compat install`; undo with `npu-compat uninstall`.
# npu-compat-checksum: {checksum}
"""Activates npu_compat, then runs the sitecustomize.py that was here before (kept below)."""

_NPU_COMPAT_PREVIOUS = {previous!r}
_NPU_COMPAT_PREVIOUS_MODE = {mode!r}


def _npu_compat_activate():
    try:
        import npu_compat
    except ImportError:
        return  # npu_compat was removed from this environment: stay out of the way
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
            try:
                os.unlink(os.path.join(site_dir, entry))
            except OSError:
                pass


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


def _atomic_write(site_dir, data, mode):
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=_TMP_SUFFIX, dir=site_dir)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, os.path.join(site_dir, NAME))
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


def install(site_dir, dry_run=False):
    """Write npu-compat's sitecustomize.py into site_dir.  Returns the text."""
    text = plan_install(site_dir, clean=not dry_run)
    if not dry_run:
        _write(site_dir, text.encode("utf-8"), 0o644)
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


def uninstall(site_dir, dry_run=False):
    """Put back what was there before install.  Returns the previous bytes or None."""
    previous, mode = plan_uninstall(site_dir, clean=not dry_run)
    if not dry_run:
        if previous is None:
            _atomic_remove(site_dir)
        else:
            _write(site_dir, previous, 0o644 if mode is None else mode)
    return previous


def _write(site_dir, data, mode):
    try:
        _atomic_write(site_dir, data, mode)
    except OSError as exc:
        raise Refused(f"could not write {os.path.join(site_dir, NAME)}: {exc.strerror or exc}; nothing changed") from None


def shadowing(site_dir):
    """A sitecustomize earlier on sys.path that would run instead of site_dir's, or None."""
    from importlib.machinery import PathFinder

    target = os.path.normcase(os.path.abspath(site_dir))
    for entry in sys.path:
        here = os.path.normcase(os.path.abspath(entry or os.curdir))
        if here == target:
            return None
        spec = PathFinder.find_spec("sitecustomize", [entry or os.curdir])
        if spec is not None:
            return spec.origin
    return None
