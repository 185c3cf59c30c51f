"""Finding the files to scan, reading them safely, and the cheap test of
whether a file can hold a site at all (so that most files need no parse)."""

import os
import re
import stat
from importlib.machinery import PathFinder


class ScanError(Exception):
    """A path that does not exist or a package that is not installed."""


# ---- which files ----

def top_root(directory):
    """Parent of the outermost package containing ``directory`` (or itself)."""
    d = os.path.abspath(directory)
    while os.path.isfile(os.path.join(d, "__init__.py")):
        parent = os.path.dirname(d)
        if parent == d:
            break
        d = parent
    return d


def module_name(path, root):
    """Dotted module name of ``path`` below ``root`` (None outside it)."""
    prefix = root.rstrip(os.sep) + os.sep
    rel = path[len(prefix):] if path.startswith(prefix) else os.path.relpath(path, root)
    if rel.startswith(".."):
        return None
    stem = rel[:-3] if rel.endswith(".py") else rel
    parts = [p for p in stem.split(os.sep) if p]
    if parts and parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts) or None


# Directories of tests and benchmarks: their sites are counted apart from the
# serving code's (sglang ships sglang/test, sglang/benchmark and
# sglang/multimodal_gen/test in its wheel); --skip-tests leaves them out.
TEST_DIRS = frozenset(("test", "tests", "benchmark", "benchmarks"))


def in_tests(module, shown):
    """Whether a file lies under a test/ or benchmark/ directory of its package (by its dotted
    module name, else by the path as shown)."""
    if module:
        parts = module.split(".")[:-1] if not shown.endswith("__init__.py") else module.split(".")
    else:
        parts = shown.replace(os.sep, "/").split("/")[:-1]
    return any(p in TEST_DIRS for p in parts)


def is_python_file(path):
    """A file argument worth scanning: ``*.py``, or a script whose ``#!`` line names Python."""
    if path.endswith(".py"):
        return True
    try:
        with open(path, "rb") as f:
            head = f.readline(256)
    except OSError:
        return True  # let the read report why
    return head.startswith(b"#!") and b"python" in head


def walk(top, errors, skip_tests=False):
    """Every ``*.py`` below ``top``, sorted; unreadable directories go to ``errors``.

    ``skip_tests``: leave out the TEST_DIRS below ``top``."""

    def onerror(exc):
        errors.append({"path": getattr(exc, "filename", top) or top, "error": f"{type(exc).__name__}: {exc.strerror}"})

    for dirpath, dirnames, filenames in os.walk(top, onerror=onerror):
        # __pycache__ holds no sources; hidden dirs are VCS data or virtual environments.
        dirnames[:] = sorted(
            d for d in dirnames
            if d != "__pycache__" and not d.startswith(".") and not (skip_tests and d in TEST_DIRS)
        )
        for f in sorted(filenames):
            if f.endswith(".py"):
                yield os.path.join(dirpath, f)


def package_locations(name):
    """[(directory or file, root)] of an installed package, found without importing it."""
    parts = name.split(".")
    if not name or not all(p.isidentifier() for p in parts):
        raise ScanError(f"invalid package name: {name!r}")
    try:
        spec = PathFinder.find_spec(parts[0])
    except Exception as exc:  # odd sys.path entries: report, do not crash
        raise ScanError(f"cannot look up package {name!r}: {exc}") from None
    if spec is None:
        raise ScanError(f"package {name!r} is not installed (not found on sys.path; pass its source directory as PATH)")
    if spec.submodule_search_locations:
        locs = [os.path.abspath(p) for p in spec.submodule_search_locations]
    elif spec.origin and os.path.isfile(spec.origin):
        locs = [os.path.abspath(spec.origin)]
    else:
        raise ScanError(f"package {name!r} has no source files on disk")
    out = []
    for loc in locs:
        cur = loc
        for part in parts[1:]:
            if os.path.isdir(os.path.join(cur, part)):
                cur = os.path.join(cur, part)
            elif os.path.isfile(os.path.join(cur, part + ".py")):
                cur = os.path.join(cur, part + ".py")
            else:
                cur = None
                break
        if cur is not None:
            out.append((cur, os.path.dirname(loc)))
    if not out:
        raise ScanError(f"package {name!r} is not installed (no module {name!r} under {', '.join(locs)})")
    return out


def read_bytes(path):
    """(bytes, identity) of a regular file; identity is (device, inode).  A FIFO, socket or device named ``*.py``
    raises OSError instead of blocking the scan forever (the open does not
    wait for a writer, and nothing is read from a non-regular file)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    with open(fd, "rb", closefd=True) as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"not a regular file ({_kind(st.st_mode)})")
        return f.read(), (st.st_dev, st.st_ino)


def _kind(mode):
    for test, word in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return word
    return "special file"


# ---- can this file hold a site? ----
#
# Every spelling the scanner recognises puts the word ``compile`` or
# ``optimize`` in code (not in a comment or a string) in one of two places:
# after a dot whose left side is ``torch``, ``compiler``, ``_dynamo`` or a
# name bound by some ``as NAME`` (``t.compile``), or in a ``from torch...
# import`` list (``from torch import compile as tc``).  A file without
# either cannot hold a site and is not parsed.  Names that another module
# binds to torch.compile (``jit = torch.compile``) are found in a second
# step (see engine.py).  The tests check the result against a parse of every
# file, on real sglang trees.

_WORD = re.compile(rb"\b(?:compile|optimize)\b")
# Comments and strings (all prefixes, triple quotes), or the word in code.
_LEX = re.compile(
    rb"#[^\n]*"
    rb'|"""(?:[^"\\]|\\.|"(?!""))*(?:"""|\Z)'
    rb"|'''(?:[^'\\]|\\.|'(?!''))*(?:'''|\Z)"
    rb'|"(?:[^"\\\n]|\\.)*"?'
    rb"|'(?:[^'\\\n]|\\.)*'?"
    rb"|\b(compile|optimize)\b",
    re.S,
)
_DOTTED_BEFORE = re.compile(rb"(\w+)\s*\.\s*$")
_AS_NAME = re.compile(rb"as\s+(\w+)")  # a superset (no \b: a literal prefix is faster)
_FROM_TORCH = re.compile(rb"from\s+torch[\w.]*\s+import\s*(\([^)]*\)|[^\n]*(?:\\\n[^\n]*)*)")
_TORCH_PARTS = frozenset({b"torch", b"compiler", b"_dynamo"})


_ATTR_WORD = re.compile(rb"\.\s*(compile|optimize)\b")


def _could_be_api(data, offsets):
    """``offsets``: where the word follows a dot.  The test of the comment above."""
    bases = set()
    for off in offsets:
        m = _DOTTED_BEFORE.search(data, max(0, off - 80), off)
        if m:
            bases.add(m.group(1))
    if bases & _TORCH_PARTS:
        return True
    if bases and bases & set(_AS_NAME.findall(data)):
        return True
    return b"import" in data and any(_WORD.search(m.group(1)) for m in _FROM_TORCH.finditer(data))


def can_hold_site(data):
    """Whether the source bytes ``data`` may spell a compile call (see above)."""
    if b"compile" not in data and b"optimize" not in data:
        return False
    # Regexes on all the text first; comments and strings are only told
    # apart (one C-level pass) in the files that pass them.
    if not _could_be_api(data, [m.start(1) for m in _ATTR_WORD.finditer(data)]):
        return False
    code = {m.start() for m in _LEX.finditer(data) if m.group(1)}
    return bool(code) and _could_be_api(data, [m.start(1) for m in _ATTR_WORD.finditer(data) if m.start(1) in code])


def mentions(data, names_rx):
    """Whether ``data`` uses one of the names ``names_rx`` matches (a compiled bytes regex)."""
    return names_rx is not None and names_rx.search(data) is not None


def names_regex(names, suffix=b""):
    """A bytes regex matching any of ``names`` as a whole word (then ``suffix``), or None for no names."""
    if not names:
        return None
    alt = b"|".join(re.escape(n.encode()) for n in sorted(names))
    return re.compile(rb"\b(?:" + alt + rb")\b" + suffix)
