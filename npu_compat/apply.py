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
from bisect import bisect_right
from itertools import accumulate, chain, compress, repeat
from operator import attrgetter, is_, methodcaller
from types import FunctionType, ModuleType

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
    now = (_type_dict(holder) if _is_type_subclass(type(holder)) else _module_dict(holder)).get(attr, MISSING)
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
        raise NpuCompatError(f"npu_compat: {reason} {_env.strict_note()}")
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
    _log.debug("npu_compat: %s now runs eagerly on NPU (own implementation, %s)", rec.target, rec.upstream)
    what = "torch.compile'd" if kind == _wrappers.COMPILED else f"{kind} object"
    return Outcome(
        APPLIED,
        f"replaced upstream's {what} {rec.qualname} with npu_compat's eager implementation ({rec.upstream})",
        stored, replacement, holder, attr,
    )  # fmt: skip


def _every_compile_disabled_on_npu(code):
    """Upstream's own guard, read from the bytecode: as many ``disable=`` keywords as ``compile``
    lookups, and an NPU flag (``_is_npu``, ``is_npu``) among the names the function reads."""
    import dis

    compiles = disables = 0
    for ins in dis.get_instructions(code):
        if ins.argval == "compile" and ins.opname.startswith("LOAD_"):
            compiles += 1
        elif ins.opname in ("KW_NAMES", "LOAD_CONST"):
            # the keyword names of a call: KW_NAMES (3.11, 3.12; its argval is an index in 3.11),
            # a constant tuple before CALL_FUNCTION_KW (3.10) or CALL_KW (3.13)
            names = code.co_consts[ins.arg] if ins.opname == "KW_NAMES" and type(ins.argval) is not tuple else ins.argval
            disables += type(names) is tuple and "disable" in names
    npu_flag = any("is_npu" in name for name in code.co_names)
    return compiles > 0 and disables >= compiles and npu_flag


def _decide_calls(rec, stored, current):
    code = getattr(current, "__code__", None) if type(current) is FunctionType else None
    if code is None:
        return Outcome(INCOMPATIBLE, f"{rec.target} is not a Python function: left as it is", stored)
    if "compile" not in code.co_names:
        return Outcome(UPSTREAM_FIXED, f"{rec.qualname} calls no torch.compile here", stored)
    if _every_compile_disabled_on_npu(code):
        return Outcome(UPSTREAM_FIXED, f"every torch.compile call in {rec.qualname} passes disable=_is_npu here", stored)
    return Outcome(
        APPLIED,
        f"torch.compile calls inside {rec.qualname} run eagerly on NPU (disable=True, as {rec.upstream})",
        stored, stored,
    )  # fmt: skip


def _decide_guard(rec, holder, attr, stored, current, kind, swaps):
    if rec.scope == "calls" or (rec.scope == "auto" and kind == _wrappers.PLAIN):
        return _decide_calls(rec, stored, current)
    if kind == _wrappers.PLAIN:
        return Outcome(UPSTREAM_FIXED, f"{rec.qualname} is not compiled on NPU here (a plain function)", stored)
    if kind == _wrappers.DISABLED:
        return Outcome(UPSTREAM_FIXED, f"{rec.qualname} is already eager here (torch.compiler.disable)", stored)
    if kind == _wrappers.OTHER:
        reason = f"{rec.target} is a {type(current).__name__}, not a compiled function: left as it is"
        _log.warning("npu_compat: %s", reason)
        if _env.strict():
            raise NpuCompatError(f"npu_compat: {reason} {_env.strict_note()}")
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
    _log.debug("npu_compat: %s now runs eagerly on NPU (guard %s, as %s)", rec.target, rec.name, rec.upstream)
    return Outcome(
        APPLIED,
        f"the compiled {rec.qualname} was replaced by its own eager function (disable=is_npu(), as {rec.upstream})",
        stored, replacement, holder, attr,
    )  # fmt: skip


# --- every other binding ----------------------------------------------------------------


def package_modules(packages):
    """The loaded modules of ``packages`` (their names' top level), in load order.

    Only real module objects under string names: anything else a package put
    in ``sys.modules`` (a config object, a proxy) is skipped, and is never
    asked for an attribute.
    """
    out = []
    for name, mod in list(sys.modules.items()):
        if type(name) is str and name.partition(".")[0] in packages and _is_module(type(mod)):
            out.append(mod)
    return out


def modules_since(module, packages):
    """The loaded modules of ``packages`` that entered ``sys.modules`` after ``module`` did.

    ``sys.modules`` keeps insertion order and a module is put there before it
    executes: these are the modules imported while ``module`` was executing
    (or later), the only ones that can hold a binding of what it defined
    before its post-import hook ran.
    """
    out, after = [], False
    for name, mod in list(sys.modules.items()):
        if mod is module:
            after = True
        elif after and type(name) is str and name.partition(".")[0] in packages:
            if _is_module(type(mod)):
                out.append(mod)
    return out


# The walk filters dictionaries at C speed, with exact type checks: a late
# activation walks ~30,000 module attributes, and isinstance() could consult
# a foreign object's __class__ (a lazy-import proxy may import on that).
_is_type_subclass = type.__dict__["__subclasscheck__"].__get__(type)
_is_module = type.__dict__["__subclasscheck__"].__get__(ModuleType)  # on type(x): no foreign __class__
_type_qualname = type.__dict__["__qualname__"].__get__
_code_of = attrgetter("__code__")


_func_of = attrgetter("__func__")
_values = methodcaller("values")  # a dict's or a class's mappingproxy's


def _collect(modules):
    """Every value of ``modules`` and of the classes they define, with its type and holder.

    Dictionaries are read through the descriptors of ``ModuleType`` and
    ``type`` themselves, never through the object (a metaclass may define
    ``__getattribute__``).  An entry that cannot be read so (not a real
    module or class, a name that is not a string) is skipped on its own:
    the rest are still walked.  The values themselves are gathered with
    C-level passes only.
    """
    holders, names = [], set()
    for m in modules:
        d = _module_dict(m) if _is_module(type(m)) else None
        name = d.get("__name__") if type(d) is dict else None
        if type(name) is str:  # exact str: hashing it runs no foreign __hash__
            holders.append((m, d))
            names.add(name)
    values = list(chain.from_iterable(map(_values, [d for _, d in holders])))
    types = list(map(type, values))
    nmod = len(holders)
    classes = list(compress(values, map(_is_type_subclass, types)))
    for cls in dict(zip(map(id, classes), classes)).values():  # each class once, by identity
        try:
            cd = _type_dict(cls)
        except Exception:
            continue
        owner = cd.get("__module__")
        if type(owner) is str and owner in names:
            holders.append((cls, cd))
    more = list(chain.from_iterable(map(_values, [d for _, d in holders[nmod:]])))
    values += more
    types += map(type, more)
    ends = list(accumulate(map(len, [d for _, d in holders])))
    return holders, values, types, ends


_module_dict = ModuleType.__dict__["__dict__"].__get__  # the module's own dict, whatever its class says
_type_dict = type.__dict__["__dict__"].__get__  # a class's own mappingproxy, past any metaclass


def _keys_of(d, value):
    """The keys under which ``d`` holds exactly ``value``."""
    return list(compress(list(d), map(is_, list(d.values()), repeat(value))))


def _where(values, types, wanted):
    """Indices of the values that are in ``wanted`` (ids), bare or as a static/classmethod's function."""
    out = set(compress(range(len(values)), map(wanted.__contains__, map(id, values))))
    if staticmethod in types or classmethod in types:
        idx = list(compress(range(len(values)), map(_DESCRIPTORS.__contains__, types)))
        out.update(compress(idx, map(wanted.__contains__, map(id, map(_func_of, map(values.__getitem__, idx))))))
    return out


def _wrappers_at(values, types, codes):
    """Indices of the values that are torch wrappers (bare or in a static/classmethod), by code id."""
    idx = list(compress(range(len(values)), map(is_, types, repeat(FunctionType))))
    out = set(compress(idx, map(codes.__contains__, map(id, map(_code_of, map(values.__getitem__, idx))))))
    if staticmethod in types or classmethod in types:
        idx = list(compress(range(len(values)), map(_DESCRIPTORS.__contains__, types)))
        inner = list(map(_func_of, map(values.__getitem__, idx)))
        keep = list(map(is_, map(type, inner), repeat(FunctionType)))
        idx, inner = list(compress(idx, keep)), list(compress(inner, keep))
        out.update(compress(idx, map(codes.__contains__, map(id, map(_code_of, inner)))))
    return out


_DESCRIPTORS = frozenset((staticmethod, classmethod))


def wrapper_codes(torch):
    """The ids of the code objects of torch's compile and disable wrappers, made once on a probe.

    The probe wrappers are kept alive (in the returned tuple) so the ids stay theirs.
    """
    def probe():
        return None

    codes, keep = set(), []
    # backend="eager": the same wrapper code as any backend, without importing inductor
    for make in (lambda: torch.compile(probe, backend="eager"), lambda: torch.compiler.disable(probe)):
        try:
            w = make()
            if type(w) is FunctionType:
                codes.add(id(w.__code__))
                keep.append(w)
        except Exception:
            pass
    _probes.extend(keep)
    return frozenset(codes) or None


_probes = []


def walk(modules, swaps, found=None, codes=None):
    """Rewire every binding of a swapped compiled object in ``modules`` (and their classes).

    ``found(holder, attr, fn)``, if given, is called for every compile
    wrapper seen; it may return an eager function to swap in, or None.
    ``codes``: ids of torch's wrapper code objects (:func:`wrapper_codes`);
    without them every function is looked at.  Returns the number of
    bindings rewired.
    """
    eager = swaps.eager
    holders, values, types, ends = _collect(modules)
    at = set()
    if codes is not None:
        at = _wrappers_at(values, types, codes)  # every compile wrapper, the swapped ones among them
    if eager and (codes is None or not all(id(c.__code__) in codes for c, _ in eager.values())):
        at |= _where(values, types, set(eager))
    if found is not None and codes is None:
        at |= set(compress(range(len(values)), map(_FUNCTIONS.__contains__, types)))
    n = 0
    orig = _wrappers.ORIG
    pairs = {}
    for i in sorted(at):
        holder, d = holders[bisect_right(ends, i)]
        for key in _keys_of(d, values[i]):
            if type(key) is str:  # a non-string key is no attribute (and could hash foreign code)
                pairs[(id(holder), key)] = (holder, key, values[i])
    for holder, key, value in pairs.values():
        fn = value.__func__ if type(value) in _DESCRIPTORS else value
        if type(fn) is not FunctionType:
            continue
        pair = eager.get(id(fn))
        if pair is None and found is not None and orig in fn.__dict__:
            try:
                new = found(holder, key, fn)
            except Exception as exc:  # one odd binding: skip it, walk the rest
                _log.debug("npu_compat: walk: skipped %s: %s: %s", key, type(exc).__name__, exc)
                continue
            if new is not None:
                swaps.add(fn, new)
                pair = (fn, new)
        if pair is None or pair[0] is not fn:
            continue
        replacement = rewrap(value, pair[1])
        try:
            put(holder, key, replacement)
        except Exception as exc:
            _log.warning("npu_compat: could not rewire %s.%s: %s", _holder_name(holder), key, exc)
            continue
        swaps.rewired.append((holder, key, value, replacement))
        n += 1
    return n


_FUNCTIONS = frozenset((FunctionType, staticmethod, classmethod))


def _holder_name(holder):
    try:
        if _is_type_subclass(type(holder)):
            name = _type_qualname(holder)
        else:
            name = _module_dict(holder).get("__name__")
    except Exception:
        name = None
    return name if type(name) is str else "?"


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
