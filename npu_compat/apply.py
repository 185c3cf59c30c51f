"""The decision chain of one record on one module, and the swaps it makes.

A record is a :class:`~npu_compat.registry.Patch` (npu_compat installs its
own implementation) or a :class:`~npu_compat.registry.Guard` (the compiled
object's own eager function takes its place).  Both go through the same
states, in this order: disabled, opt-in, not-needed, absent, incompatible,
upstream-fixed, applied; anything unexpected is ``failed`` (decided by the
caller, :mod:`npu_compat.core`).

Every replacement is recorded as a swap ``compiled -> eager`` so that the
other bindings of the same compiled object (``from X import f`` in another
module, a class attribute) can be rewired by :func:`rewire`, and restored by
:func:`restore`.  Foreign objects are read through ``vars()`` only.
"""

import sys
from types import FunctionType

from npu_compat import NpuCompatError, _env, _log, _wrappers

APPLIED = "applied"
NOT_NEEDED = "not-needed"
ABSENT = "absent"
INCOMPATIBLE = "incompatible"
UPSTREAM_FIXED = "upstream-fixed"
FAILED = "failed"
DISABLED = "disabled"
OPT_IN = "opt-in"

MISSING = object()


class Outcome:
    __slots__ = ("state", "reason", "seen", "ours", "holder", "attr")

    def __init__(self, state, reason, seen=MISSING, ours=MISSING, holder=None, attr=None):
        self.state, self.reason, self.seen, self.ours = state, reason, seen, ours
        self.holder, self.attr = holder, attr


class Swaps:
    """compiled object -> eager object, and every binding rewired from one to the other."""

    def __init__(self):
        self.eager = {}  # id(compiled) -> (compiled, eager)
        self.rewired = []  # (holder, attr, compiled, eager wrapped as stored)

    def add(self, compiled, eager):
        self.eager[id(compiled)] = (compiled, eager)

    def clear(self):
        self.eager.clear()
        self.rewired.clear()


# --- resolving a site ----------------------------------------------------------------


def resolve(module, qualname):
    """(holder, attr, stored value) of ``qualname`` in ``module``; value MISSING if absent.

    Reads ``vars()``: a module's or class's own dictionary, never ``getattr``.
    """
    head, _, tail = qualname.partition(".")
    value = vars(module).get(head, MISSING)
    if not tail:
        return module, head, value
    if not isinstance(value, type):
        return None, tail, MISSING
    return value, tail, vars(value).get(tail, MISSING)


def unwrap(stored):
    """The function inside a staticmethod/classmethod, else the value itself."""
    if type(stored) in (staticmethod, classmethod):
        return stored.__func__
    return stored


def rewrap(stored, fn):
    """``fn`` wrapped the way ``stored`` was (staticmethod, classmethod or bare)."""
    if type(stored) in (staticmethod, classmethod):
        return type(stored)(fn)
    return fn


def put(holder, attr, value):
    setattr(holder, attr, value)
    now = (vars(holder) if isinstance(holder, type) else holder.__dict__).get(attr, MISSING)
    if now is not value:
        raise RuntimeError(f"setting {attr} did not take effect")


# --- the chain ------------------------------------------------------------------------


def _param_names(fn):
    code = getattr(fn, "__code__", None)
    if code is not None and "__wrapped__" not in getattr(fn, "__dict__", {}):
        n = code.co_argcount + code.co_kwonlyargcount
        return tuple(code.co_varnames[:n])
    import inspect

    return tuple(inspect.signature(fn).parameters)


def _sig_text(fn, names):
    try:
        import inspect

        return f"{fn.__name__}{inspect.signature(fn)}"
    except Exception:
        return f"({', '.join(names)})"


def _incompatible(rec, fn):
    names = _param_names(fn)
    if rec.params is None or names == rec.params:
        return None
    reason = (
        f"{rec.target} has parameters ({', '.join(names)}), expected ({', '.join(rec.params)}): left as it is"
    )
    _log.warning(
        "npu_compat: %s is incompatible: expected %s(%s), found %s; left as it is",
        rec.target, rec.qualname, ", ".join(rec.params), _sig_text(fn, names),
    )  # fmt: skip
    if _env.strict():
        raise NpuCompatError(f"npu_compat: {reason} (NPU_COMPAT_STRICT=1)")
    return reason


def gate(rec, npu, why, disabled_names, opted_in):
    """The states decided before the module is looked at, or None to go on."""
    if rec.name in disabled_names:
        return Outcome(DISABLED, f"NPU_COMPAT_DISABLE names {rec.name}")
    if not rec.default and rec.name not in opted_in:
        return Outcome(OPT_IN, f"opt-in guard: NPU_COMPAT_EAGER={rec.name} applies it")
    if not npu:
        return Outcome(NOT_NEEDED, f"not on NPU: {why}")
    return None


def decide(rec, module, ours_before, swaps, impl=None):
    """Decide and apply one record on NPU.  ``ours_before``: what npu_compat installed last time."""
    holder, attr, stored = resolve(module, rec.qualname)
    if stored is MISSING:
        return Outcome(ABSENT, f"{rec.module} has no {rec.qualname} (this sglang does not define it)")
    current = unwrap(stored)
    if ours_before is not MISSING and (stored is ours_before or current is unwrap(ours_before)):
        return Outcome(APPLIED, f"{rec.qualname} is already npu_compat's", stored, stored, holder, attr)
    kind = _wrappers.kind(current)
    if rec.kind == "implementation":
        return _decide_patch(rec, holder, attr, stored, current, kind, swaps, impl)
    return _decide_guard(rec, holder, attr, stored, current, kind, swaps)


def _decide_patch(rec, holder, attr, stored, current, kind, swaps, ours):
    original = _wrappers.eager_of(current)
    bad = _incompatible(rec, original if original is not None else current)
    if bad:
        return Outcome(INCOMPATIBLE, bad, stored)
    if _wrappers.provably_plain(current):
        return Outcome(UPSTREAM_FIXED, f"{rec.qualname} is a plain function on NPU here: the upstream fix is in", stored)
    import torch

    # What fixed upstream does: torch.compile(fn, ..., disable=is_npu()).  On
    # NPU that returns the function itself: no wrapper frame is added.  Any
    # object that is not provably upstream's plain function is replaced
    # (a torch build whose compile wrapper lacks the usual markers included).
    replacement = torch.compile(ours, disable=True, **rec.compile_kwargs)
    put(holder, attr, replacement)
    swaps.add(current, replacement)
    _log.info("npu_compat: %s now runs eagerly on NPU (own implementation, %s)", rec.target, rec.upstream)
    what = "torch.compile'd" if kind == _wrappers.COMPILED else f"{kind} object"
    return Outcome(
        APPLIED,
        f"replaced upstream's {what} {rec.qualname} with npu_compat's eager implementation ({rec.upstream})",
        stored, replacement, holder, attr,
    )  # fmt: skip


def _decide_calls(rec, stored, current):
    code = getattr(current, "__code__", None) if type(current) is FunctionType else None
    if code is None:
        return Outcome(INCOMPATIBLE, f"{rec.target} is not a Python function: left as it is", stored)
    if "compile" not in code.co_names:
        return Outcome(UPSTREAM_FIXED, f"{rec.qualname} calls no torch.compile here", stored)
    return Outcome(
        APPLIED,
        f"torch.compile calls inside {rec.qualname} run eagerly on NPU (disable=True, as {rec.upstream})",
        stored, stored,
    )  # fmt: skip


def _decide_guard(rec, holder, attr, stored, current, kind, swaps):
    if rec.scope == "calls":
        return _decide_calls(rec, stored, current)
    if kind == _wrappers.PLAIN:
        return Outcome(UPSTREAM_FIXED, f"{rec.qualname} is not compiled on NPU here (a plain function)", stored)
    if kind == _wrappers.DISABLED:
        return Outcome(UPSTREAM_FIXED, f"{rec.qualname} is already eager here (torch.compiler.disable)", stored)
    if kind == _wrappers.OTHER:
        reason = f"{rec.target} is a {type(current).__name__}, not a compiled function: left as it is"
        _log.warning("npu_compat: %s", reason)
        if _env.strict():
            raise NpuCompatError(f"npu_compat: {reason} (NPU_COMPAT_STRICT=1)")
        return Outcome(INCOMPATIBLE, reason, stored)
    eager = _wrappers.eager_of(current)
    if eager is None:
        raise RuntimeError(f"{rec.target} is compiled but carries no original function")
    bad = _incompatible(rec, eager)
    if bad:
        return Outcome(INCOMPATIBLE, bad, stored)
    replacement = rewrap(stored, eager)
    put(holder, attr, replacement)
    swaps.add(current, eager)
    _log.info("npu_compat: %s now runs eagerly on NPU (guard %s, as %s)", rec.target, rec.name, rec.upstream)
    return Outcome(
        APPLIED,
        f"the compiled {rec.qualname} was replaced by its own eager function (disable=is_npu(), as {rec.upstream})",
        stored, replacement, holder, attr,
    )  # fmt: skip


# --- every other binding ----------------------------------------------------------------


def package_modules(packages):
    """The loaded modules of ``packages`` (their names' top level), in load order."""
    out = []
    for name, mod in list(sys.modules.items()):
        if mod is not None and name.partition(".")[0] in packages:
            out.append(mod)
    return out


def _holders(module):
    """The module and the classes it defines, each with its own dictionary."""
    d = getattr(module, "__dict__", None)
    if type(d) is not dict:
        return
    yield module, d
    name = d.get("__name__")
    for value in list(d.values()):
        if isinstance(value, type):
            cd = value.__dict__
            if cd.get("__module__") == name:
                yield value, cd


def walk(modules, swaps, found=None):
    """Rewire every binding of a swapped compiled object in ``modules``.

    ``found(holder, attr, fn)``, if given, is called for every compiled
    function seen (compile wrappers only, read from ``vars()``); it may
    return an eager function to swap in, or None.  Returns the number of
    bindings rewired.
    """
    eager = swaps.eager
    n = 0
    orig = _wrappers.ORIG
    for module in modules:
        for holder, d in _holders(module):
            for key, value in list(d.items()):
                fn = value
                if type(fn) is not FunctionType:
                    if type(fn) not in (staticmethod, classmethod):
                        continue
                    fn = fn.__func__
                    if type(fn) is not FunctionType:
                        continue
                fd = fn.__dict__
                if not fd or orig not in fd:
                    continue
                pair = eager.get(id(fn))
                if pair is None and found is not None:
                    new = found(holder, key, fn)
                    if new is not None:
                        swaps.add(fn, new)
                        pair = (fn, new)
                if pair is None or pair[0] is not fn:
                    continue
                replacement = rewrap(value, pair[1])
                try:
                    put(holder, key, replacement)
                except Exception as exc:
                    _log.warning("npu_compat: could not rewire %s.%s: %s", getattr(holder, "__name__", "?"), key, exc)
                    continue
                swaps.rewired.append((holder, key, value, replacement))
                n += 1
    return n


def restore(swaps):
    """Put every rewired binding back where it still holds npu_compat's object."""
    kept = 0
    for holder, key, old, new in reversed(swaps.rewired):
        d = vars(holder)
        if d.get(key, MISSING) is new:
            try:
                setattr(holder, key, old)
            except Exception:
                kept += 1
        else:
            kept += 1
    swaps.clear()
    return kept
