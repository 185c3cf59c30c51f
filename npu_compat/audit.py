"""On NPU: the settings that make sglang's compiles eager, and the record of what it compiled.

* :func:`parse_eager` reads ``NPU_COMPAT_EAGER``: ``all`` (every helper sglang
  compiles, NPU's own graph-mode compiles kept), ``everything``, record
  names, ``module:qualname`` sites, and ``@PATH`` lists of them (read by
  :func:`read_lists`, on NPU, once per process).
* :class:`Entry` / :data:`audit`: one entry per torch.compile site of
  sglang in this process: what was compiled, where, with which backend,
  whether NPU runs it eagerly and by what (upstream, a record, a setting,
  a fallback), and whether it was called.  An entry holds no reference to
  the compiled object (only its code), so it never keeps a model alive.
* ``NPU_COMPAT_FALLBACK``: :func:`fallback_enabled`.
* ``NPU_COMPAT_REPORT=PATH`` (the line each process appends at exit) is
  written by :mod:`npu_compat.reportfile`.

What happens to a compile is decided in :mod:`npu_compat.intercept`; nothing
here runs off NPU.
"""

import os
import sys
import weakref
from types import FunctionType, MethodType

from npu_compat import _log, _wrappers

ALL = "all"  # every helper: NPU's own graph-mode compiles (the model under NPU graph capture) stay
EVERYTHING = "everything"  # every torch.compile sglang makes, graph mode included
_ALL_SPELLINGS = ("all", "*", "1", "true", "yes", "on", "helpers")


class Setting:
    """NPU_COMPAT_EAGER, parsed: the mode (None, all, everything), record names, sites, list files."""

    def __init__(self, mode=None, names=frozenset(), sites=frozenset(), files=()):
        self.mode, self.names, self.sites, self.files = mode, frozenset(names), frozenset(sites), tuple(files)

    @property
    def everything(self):  # any "make sglang's compiles eager" mode
        return self.mode is not None

    def merged(self, other):
        mode = EVERYTHING if EVERYTHING in (self.mode, other.mode) else (self.mode or other.mode)
        return Setting(mode, self.names | other.names, self.sites | other.sites, self.files)


def _site(item, watched):
    mod, sep, qual = item.partition(":")
    mod, qual = mod.strip(), qual.strip()
    ok = (
        sep
        and mod.partition(".")[0] in watched
        and all(p.isidentifier() for p in mod.split("."))
        and all(p.isidentifier() for p in qual.split("."))
        and qual.count(".") <= 1
    )
    return (mod, qual) if ok else None


def _items(items, known_names, watched, files_ok=True):
    """Sort items into (mode, names, sites, files, bad)."""
    mode, names, sites, files, bad = None, set(), set(), [], []
    for item in items:
        low = item.lower()
        if low in ("default", "registry"):
            continue
        if low in _ALL_SPELLINGS:
            mode = mode or ALL
            continue
        if low == EVERYTHING:
            mode = EVERYTHING
            continue
        if item.startswith("@") and files_ok:
            files.append(item[1:].strip())
            continue
        if low in known_names:
            names.add(low)
            continue
        site = _site(item, watched)
        if site is not None:
            sites.add(site)
        else:
            bad.append(item)
    return mode, names, sites, files, bad


def parse_eager(raw, known_names, watched):
    """Parse NPU_COMPAT_EAGER (``@PATH`` items are kept as paths, not read); one WARNING for the rest."""
    items = [t.strip() for t in raw.split(",")]
    mode, names, sites, files, bad = _items([t for t in items if t], known_names, watched)
    if bad:
        _log.warning_once(
            ("NPU_COMPAT_EAGER", raw),
            "NPU_COMPAT_EAGER: not understood, ignored: %s (use all, everything, a guard's name, "
            "module:qualname inside %s, or @FILE)",
            ", ".join(_log.short(b) + _did_you_mean(b, known_names) for b in bad), ", ".join(watched),
        )  # fmt: skip
    return Setting(mode, names, sites, files)


def _did_you_mean(word, known_names):
    from npu_compat._env import did_you_mean

    return did_you_mean(word, known_names)


def read_lists(setting, known_names, watched):
    """``setting`` with the sites and names of its ``@PATH`` files added (one WARNING per bad file).

    A file may name ``module:qualname`` sites and guard names only; anything
    else (``all``, ``everything``, ``@PATH``) is named in the WARNING and ignored."""
    out = setting
    for path in setting.files:
        try:
            with open(path, encoding="utf-8") as f:
                if not os.path.isfile(path):
                    raise OSError("not a regular file")
                lines = f.read(1 << 20).splitlines()
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            _log.warning_once(
                ("NPU_COMPAT_EAGER@", path),
                "NPU_COMPAT_EAGER: cannot read the list @%s (%s); ignored", _log.short(path, 300), why,
            )  # fmt: skip
            continue
        items, numbers = [], []
        for n, line in enumerate(lines, 1):
            text = line.partition("#")[0].strip()
            if text:
                items.append(text)
                numbers.append(n)
        # A list file holds sites and guard names only: a mode (all, everything) named in a
        # file, maybe one line appended to a shared report, would make unrelated sites eager.
        listed = [t for t in items if t.lower() in known_names or _site(t, watched) is not None]
        mode, names, sites, _, _ = _items(listed, known_names, watched, files_ok=False)
        bad = [t for t in items if t not in listed]
        if bad:
            where = ", ".join(f"line {numbers[items.index(b)]}: {_log.short(b)}" for b in bad[:3])
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            _log.warning_once(
                ("NPU_COMPAT_EAGER@bad", path),
                "NPU_COMPAT_EAGER: @%s: not understood, ignored: %s%s", _log.short(path, 300), where, more,
            )  # fmt: skip
        out = out.merged(Setting(mode, names, sites))
    return out


def eager_setting():
    from npu_compat import WATCHED_PACKAGES, registry

    raw = os.environ.get("NPU_COMPAT_EAGER", "")
    return parse_eager(raw, {r.name for r in registry.all_patches()}, WATCHED_PACKAGES)


def fallback_enabled():
    """NPU_COMPAT_FALLBACK: on unless 0/false/no/off; anything else gets one WARNING (and means on)."""
    raw = os.environ.get("NPU_COMPAT_FALLBACK", "")
    value = raw.strip().lower()
    if value in ("0", "false", "no", "off"):
        return False
    if value not in ("", "1", "true", "yes", "on"):
        _log.warning_once(
            ("NPU_COMPAT_FALLBACK", raw),
            "NPU_COMPAT_FALLBACK=%s not understood (use 1 or 0); the fallback stays on", _log.short(raw),
        )  # fmt: skip
    return True


# --- the record of what NPU compiles --------------------------------------------------------


class Entry:
    """One torch.compile site of sglang in this process, and what became of it."""

    __slots__ = (
        "site", "target", "where", "source", "backend", "eager", "eager_by", "why", "kept", "when",
        "fell_back", "fallback", "codes", "speed", "ran",
    )  # fmt: skip

    def __init__(self, site, target, where, backend, source, when, fallback=True):
        self.site, self.target, self.where, self.backend = site, target, where, backend
        self.source, self.when = source, when
        self.eager, self.eager_by, self.why, self.kept = False, None, None, None
        self.fell_back = None  # {"stage", "type", "message"} once its compile failed
        self.fallback = fallback
        self.codes = []  # code objects of what was compiled here (never the functions themselves)
        self.speed = None  # NPU_COMPAT_SPEED's measurement: compiled_us, eager_us, samples, spread, picked
        self.ran = False  # a graph of it ran successfully (seen by the fallback's graph wrapper)

    def seen(self, fn):
        code = _code_of(fn)
        if code is not None and all(code is not c for c in self.codes):
            self.codes.append(code)
            audit.by_code[id(code)] = (code, self)

    def made_eager(self, by, why):
        if self.fell_back is None:
            self.eager, self.eager_by, self.why = True, by, why
            audit.changed(self)

    def set_ran(self):
        self.ran = True
        audit.changed(self)

    def set_speed(self, record):
        self.speed = record
        audit.changed(self)

    def set_fell_back(self, info, why):
        """Flip to eager for good after an NPU compile failure (``info``: stage, type, message)."""
        self.fell_back = info
        self.eager, self.eager_by, self.why = True, "fallback", why
        audit.changed(self)

    def called(self):
        """Whether dynamo has compiled (so: run) this site: True, False or None (cannot tell)."""
        if self.eager and self.eager_by != "fallback":
            return None
        get = getattr(sys.modules.get("torch._dynamo.eval_frame"), "_debug_get_cache_entry_list", None)
        if not self.codes or get is None:
            return None
        try:
            return any(len(get(code)) > 0 for code in self.codes)
        except Exception:
            return None

    def as_dict(self):
        return {
            "site": self.site,
            "target": self.target,
            "where": self.where,
            "source": self.source,
            "backend": self.backend,
            "eager": self.eager,
            "eager_by": self.eager_by,
            "why": self.why,
            "kept": self.kept,
            "when": self.when,
            "called": self.called(),
            "fell_back": dict(self.fell_back) if self.fell_back else None,
            "speed": dict(self.speed) if self.speed else None,
        }


def _code_of(fn):
    for _ in range(8):
        t = type(fn)
        if t in (staticmethod, classmethod):
            fn = fn.__func__
        elif t is FunctionType and "__wrapped__" in fn.__dict__:
            fn = fn.__dict__["__wrapped__"]
        elif t is MethodType:
            fn = fn.__func__
        else:
            break
    return fn.__code__ if type(fn) is FunctionType else None


class Audit:
    def __init__(self):
        self.entries = {}  # (target, where) -> Entry, in order of first sight
        self.by_code = {}  # id(code) -> (code, Entry)
        self.made_eager = weakref.WeakValueDictionary()  # id(fn) -> fn made eager at definition
        # Called with the entry (or None) whenever the audit's answer changes: a site
        # seen, made eager, run for the first time, fallen back.  The report writer
        # listens here; a listener must be cheap and must never raise.
        self.listeners = []

    def changed(self, entry=None):
        for listener in tuple(self.listeners):
            try:
                listener(entry)
            except Exception:
                pass

    def entry(self, site, target, where, backend, source, when, fallback=True):
        key = (target, where)
        e = self.entries.get(key)
        if e is None:
            e = self.entries[key] = Entry(site, target, where, backend, source, when, fallback)
            self.changed(e)
        return e

    def of(self, fn):
        """The entry of a compiled site by its function (its code), or None."""
        code = _code_of(fn)
        hit = self.by_code.get(id(code)) if code is not None else None
        return hit[1] if hit is not None and hit[0] is code else None

    def clear(self):
        self.entries.clear()
        self.by_code.clear()
        self.made_eager.clear()


audit = Audit()


def existing(holder, attr, fn, why, by=None, fallback=True):
    """The entry of a compiled function found already made (before npu_compat watched)."""
    eager = _wrappers.eager_of(fn)
    mod, qual = (eager.__module__ or "?", eager.__qualname__) if type(eager) is FunctionType else ("?", attr)
    owner = holder.__dict__.get("__module__") if isinstance(holder, type) else holder.__name__
    where = f"{owner}:{holder.__qualname__ + '.' if isinstance(holder, type) else ''}{attr}"
    site = f"{mod}:{qual}" if "<" not in qual else where
    e = audit.of(eager) if eager is not None else None
    if e is None:
        backend = "unknown (compiled before npu_compat watched)"
        e = audit.entry(site, f"{mod}.{qual}", where, backend, _wrappers.source_of(eager), "found loaded", fallback)
        e.seen(eager)
    if why is not None:
        e.made_eager(by or "setting", why)
    return e
