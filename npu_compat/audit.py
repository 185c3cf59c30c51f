"""On NPU: what the watched package compiles, and the switch that makes it eager.

* :func:`install` replaces ``torch.compile`` with a thin function that, for a
  caller inside a watched package (sglang), records the compilation (site,
  backend, whether npu_compat made it eager) and, when ``NPU_COMPAT_EAGER``
  asks for it, passes ``disable=True``: upstream's own remedy, also for
  compilations made at call time inside a function body, which no attribute
  swap can reach.  Callers outside the watched packages go straight through.
* Compiled functions that already exist when npu_compat starts watching
  (late activation: the sglang plugin runs after ~970 modules are loaded)
  are found by the walk in :mod:`npu_compat.apply` and recorded too.
* ``NPU_COMPAT_REPORT=PATH`` (the line each process appends at exit) is
  written by :mod:`npu_compat.reportfile`.

Nothing here runs off NPU: the caller (:mod:`npu_compat.core`) installs it
only after the device is known to be an NPU.
"""

import os
import sys
from types import FunctionType

from npu_compat import _log, _wrappers

ALL = "all"


class Setting:
    """NPU_COMPAT_EAGER, parsed: ``all``, record names, ``module:qualname`` sites."""

    def __init__(self, everything=False, names=frozenset(), sites=frozenset()):
        self.everything, self.names, self.sites = everything, names, sites


def parse_eager(raw, known_names, watched):
    """Parse NPU_COMPAT_EAGER; one WARNING (once per value) for whatever is not understood."""
    value = raw.strip()
    if not value or value.lower() in ("default", "registry"):
        return Setting()
    if value.lower() in (ALL, "*", "1", "true", "yes", "on"):
        return Setting(everything=True)
    names, sites, bad = set(), set(), []
    for item in (t.strip() for t in value.split(",")):
        if not item:
            continue
        low = item.lower()
        if low in known_names:
            names.add(low)
            continue
        mod, sep, qual = item.partition(":")
        mod, qual = mod.strip(), qual.strip()
        ok = (
            sep
            and mod.partition(".")[0] in watched
            and all(p.isidentifier() for p in mod.split("."))
            and all(p.isidentifier() for p in qual.split("."))
            and qual.count(".") <= 1
        )
        if ok:
            sites.add((mod, qual))
        else:
            bad.append(item)
    if bad:
        _log.warning_once(
            ("NPU_COMPAT_EAGER", raw),
            "NPU_COMPAT_EAGER: not understood, ignored: %s (use all, a guard's name, or module:qualname "
            "inside %s)",
            ", ".join(_log.short(b) for b in bad), ", ".join(watched),
        )  # fmt: skip
    return Setting(names=frozenset(names), sites=frozenset(sites))


def eager_setting():
    from npu_compat import WATCHED_PACKAGES, registry

    raw = os.environ.get("NPU_COMPAT_EAGER", "")
    return parse_eager(raw, {r.name for r in registry.all_patches()}, WATCHED_PACKAGES)


# --- the record of what NPU compiles --------------------------------------------------------


class Entry:
    __slots__ = ("target", "where", "backend", "eager", "why", "fn", "when")

    def __init__(self, target, where, backend, eager, why, fn, when):
        self.target, self.where, self.backend = target, where, backend
        self.eager, self.why, self.fn, self.when = eager, why, fn, when

    def called(self):
        """Whether dynamo has compiled (so: run) this function: True, False or None (cannot tell)."""
        if self.eager:
            return None
        code = getattr(self.fn, "__code__", None)
        get = getattr(sys.modules.get("torch._dynamo.eval_frame"), "_debug_get_cache_entry_list", None)
        if code is None or get is None:
            return None
        try:
            return len(get(code)) > 0
        except Exception:
            return None

    def as_dict(self):
        return {
            "target": self.target,
            "where": self.where,
            "backend": self.backend,
            "eager": self.eager,
            "why": self.why,
            "when": self.when,
            "called": self.called(),
        }


class Audit:
    def __init__(self):
        self.entries = []
        self._seen = set()
        self.made_eager = {}  # id(fn) -> fn: compilations npu_compat turned eager at definition

    def add(self, entry):
        key = (entry.target, entry.where, id(entry.fn))
        if key in self._seen:
            return
        self._seen.add(key)
        self.entries.append(entry)

    def clear(self):
        self.entries.clear()
        self._seen.clear()
        self.made_eager.clear()


audit = Audit()


def _name_of(fn):
    """(module, qualname) of what is compiled: a function's own, or an object's class's."""
    if type(fn) is FunctionType:
        return fn.__module__ or "?", fn.__qualname__
    return type(fn).__module__, type(fn).__qualname__


def _backend_name(backend):
    if backend is None:
        return "inductor"
    if isinstance(backend, str):
        return backend
    name = getattr(backend, "__name__", None)
    return name if isinstance(name, str) else type(backend).__qualname__


class Interceptor:
    """The replacement of ``torch.compile`` while npu_compat is active on NPU."""

    def __init__(self, torch, watched, decide):
        self.torch = torch
        self.original = torch.compile
        self.watched = frozenset(watched)
        self.decide = decide  # (module, qualname, caller module, caller function) -> why eager, or None
        self.installed = None

    def install(self):
        original, watched, decide = self.original, self.watched, self.decide

        def compile(model=None, **kwargs):  # noqa: A001 - the name torch.compile has
            frame = sys._getframe(1)
            caller = frame.f_globals.get("__name__") or ""
            if caller.partition(".")[0] not in watched:
                return original(model, **kwargs)
            where = f"{caller}:{frame.f_code.co_name}:{frame.f_lineno}"
            backend = _backend_name(kwargs.get("backend"))

            code = frame.f_code
            in_fn = getattr(code, "co_qualname", code.co_name)  # Class.method from Python 3.11

            def one(fn):
                mod, qual = _name_of(fn)
                if kwargs.get("disable"):  # upstream's own guard (disable=_is_npu)
                    audit.add(Entry(f"{mod}.{qual}", where, backend, True, "upstream: disable=", fn, "at definition"))
                    return original(fn, **kwargs)
                why = decide(mod, qual, caller, in_fn)
                audit.add(Entry(f"{mod}.{qual}", where, backend, why is not None, why, fn, "at definition"))
                if why is not None:
                    audit.made_eager[id(fn)] = fn
                    return original(fn, **dict(kwargs, disable=True))
                return original(fn, **kwargs)

            if model is not None:
                return one(model)
            return one  # @torch.compile(...): the decorator receives the function

        compile.__wrapped__ = original
        compile._npu_compat = True
        self.torch.compile = compile
        self.installed = compile

    def uninstall(self):
        if self.installed is not None and self.torch.__dict__.get("compile") is self.installed:
            self.torch.compile = self.original
        self.installed = None


def existing(holder, attr, fn, why):
    """Record a compiled function found already made (before npu_compat watched)."""
    eager = _wrappers.eager_of(fn)
    mod, qual = _name_of(eager) if eager is not None else ("?", attr)
    where = f"{getattr(holder, '__module__', None) if isinstance(holder, type) else holder.__name__}"
    where = f"{where}:{holder.__qualname__ + '.' if isinstance(holder, type) else ''}{attr}"
    audit.add(Entry(f"{mod}.{qual}", where, "unknown (compiled before npu_compat watched)", why is not None, why,
                    eager if why is not None else fn, "found loaded"))  # fmt: skip
