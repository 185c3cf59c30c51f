"""On NPU: what happens to a torch.compile that sglang makes.

Every ``torch.compile`` (also ``nn.Module.compile`` and
``torch.compiler.compile``, which call it) ends in ``torch._dynamo.optimize``;
that is where npu_compat listens, so ``torch.compile`` itself stays torch's
own function (signature, docstring, warnings) for every caller.  The hook is
installed on NPU only, once ``torch._dynamo`` is imported.

For each compilation it asks *whose* it is: sglang's when what is compiled
is sglang's code (a function, or a bound method whose class is sglang's), or
when the nearest caller outside torch (and outside wrappers put on
``torch.compile``) is inside sglang.  Anything else goes straight through.

For sglang's compilations, the decision (:func:`npu_compat.core._decide`) is
one of:

* eager: ``disable=True``, upstream's own remedy: the function itself comes
  back, no wrapper;
* compiled, with a **fallback** (:mod:`npu_compat.fallback`): torch's own
  context gets a wrapped backend and frame callback before it is applied,
  so a failing conversion or a failing first graph run falls back at the
  unit that failed; what sglang gets is torch's own compile wrapper.  With
  ``NPU_COMPAT_SPEED``, a meter (:mod:`npu_compat.speed`) joins the
  context's enter/exit hooks.

Sites compiled before npu_compat watched (late activation) are armed in
place by :func:`arm_existing` when the walk finds them.
"""

import sys
from types import FunctionType, MethodType

from npu_compat import _wrappers, audit, fallback, speed

NPU_BACKEND_NAMES = frozenset(("npu", "npugraph_ex", "npugraphs", "torchair"))
NPU_BACKEND_PACKAGES = frozenset(("torchair", "torch_npu"))



# --- whose compile is it -----------------------------------------------------------------


def owner_module(obj):
    """The module whose code ``obj`` is: a function's, a bound method's class's, a module's class's.

    Reads ``__dict__``/slots of torch's and Python's own types only.
    """
    for _ in range(8):
        t = type(obj)
        if t is FunctionType:
            wrapped = obj.__dict__.get("__wrapped__")  # torch.no_grad()(fn), functools.wraps
            if wrapped is not None:
                obj = wrapped
                continue
            return obj.__module__ or ""
        if t is MethodType:
            inner = obj.__func__
            mod = getattr(type(obj.__self__), "__module__", "") or ""
            if type(inner) is FunctionType and _top(mod) not in _watched_now():
                return inner.__module__ or ""
            return mod
        return getattr(t, "__module__", "") or ""
    return ""


_WATCHED = ("sglang",)


def _watched_now():
    return _WATCHED


def _top(name):
    return name.partition(".")[0]


_SKIP = frozenset(("torch", "npu_compat", "functools", "contextlib"))


def caller_frame(torch):
    """The nearest frame outside torch, npu_compat and any wrapper put on ``torch.compile``."""
    skip = set()
    fn = getattr(torch, "__dict__", {}).get("compile")
    for _ in range(8):  # a tracer that wrapped torch.compile is not the caller
        code = getattr(fn, "__code__", None)
        if code is None:
            break
        skip.add(code)
        fn = getattr(fn, "__dict__", {}).get("__wrapped__")
    f = sys._getframe(0)
    while f is not None:
        name = f.f_globals.get("__name__")
        if f.f_code not in skip and _top(name if isinstance(name, str) else "") not in _SKIP:
            return f
        f = f.f_back
    return None


def frame_qualname(frame):
    """The qualified name of the function a frame runs."""
    code = frame.f_code
    return qualname_of(code, frame.f_globals, getattr(code, "co_qualname", None))


def qualname_of(code, f_globals, native=None):
    """``native`` (co_qualname, Python 3.11+), else found in the module: Python 3.10 has none."""
    if native is not None:
        return native
    module = f_globals.get("__name__")
    for value in list(f_globals.values()):
        if type(value) is FunctionType and value.__code__ is code:
            return value.__qualname__
        if isinstance(value, type) and value.__dict__.get("__module__") == module:
            for member in list(value.__dict__.values()):
                fn = member.__func__ if type(member) in (staticmethod, classmethod) else member
                if type(fn) is FunctionType and fn.__code__ is code:
                    return fn.__qualname__
    return code.co_name


def site_of(model, caller_mod, caller_qual):
    """``(site, target)``: the ``module:qualname`` a user pins, and what is compiled."""
    obj = _wrappers.unwrapped(model)
    if type(obj) is FunctionType:
        mod, qual = obj.__module__ or "?", obj.__qualname__
    elif type(obj) is MethodType:
        mod, qual = getattr(type(obj.__self__), "__module__", "?"), f"{type(obj.__self__).__qualname__}.{obj.__func__.__name__}"
    else:
        mod, qual = getattr(type(obj), "__module__", "?"), type(obj).__qualname__
    target = f"{mod}.{qual}"
    if type(obj) is FunctionType and "<" not in qual and _top(mod) in _watched_now():
        return f"{mod}:{qual}", target
    return f"{caller_mod}:{caller_qual}", target


# --- backends ------------------------------------------------------------------------------


backend_name = fallback.backend_name


def innermost_backend(backend):
    """The user's backend inside torch.compile's wrapper object (``compiler_fn``) and partials."""
    for _ in range(4):
        d = getattr(backend, "__dict__", None)
        if isinstance(d, dict) and "compiler_fn" in d:
            backend = d["compiler_fn"]
        elif type(backend).__name__ == "partial" and type(backend).__module__ == "functools":
            backend = backend.func
        else:
            break
    return backend


def is_npu_backend(backend):
    """True for NPU's own compilers: torchair's backend, torch_npu's registered dynamo backends."""
    if isinstance(backend, str):
        return backend.lower() in NPU_BACKEND_NAMES
    inner = innermost_backend(backend)
    if isinstance(inner, str):
        return inner.lower() in NPU_BACKEND_NAMES
    mods = (getattr(inner, "__module__", None), getattr(type(inner), "__module__", None))
    return any(isinstance(m, str) and _top(m) in NPU_BACKEND_PACKAGES for m in mods)


def is_model_compile(model, torch):
    """True when what is compiled is a model: an nn.Module, or a bound method of one (forward)."""
    module_type = getattr(getattr(torch, "nn", None), "Module", None)
    if module_type is None:
        return False
    obj = _wrappers.unwrapped(model)
    if type(obj) is MethodType:
        obj = obj.__self__
    return isinstance(obj, module_type)


# --- late activation: a site compiled before npu_compat watched ------------------------------


def arm_existing(wrapper, eager, entry, optimize):
    """Give torch's compile ``wrapper`` of a site the fallback in place (no new binding).

    When the site has not compiled yet, its callback is rebuilt through a
    :class:`fallback.Backend` from the backend torch.compile made (read from
    the wrapper's context, with ``fullgraph``/``dynamic``), so a failing
    first run is covered too; otherwise only conversions are.
    """
    make_callback = None
    ctx = _wrappers.optimize_context(wrapper)
    d = vars(ctx) if ctx is not None else {}
    backend, hops = _wrappers.user_backend(ctx) if ctx is not None else (None, 0)
    code = getattr(eager, "__code__", None)
    if optimize is not None and backend is not None and hops >= 2 and "fullgraph" in d and "_dynamic" in d:

        def make():
            get = getattr(sys.modules.get("torch._dynamo.eval_frame"), "_debug_get_cache_entry_list", None)
            if code is None or get is None or len(get(code)) > 0:
                return None  # compiled already: its cache holds the old backend; keep it
            wrapped = fallback.Backend(backend, entry)
            new = optimize(backend=wrapped, nopython=d["fullgraph"], dynamic=d["_dynamic"])
            return vars(new).get("callback"), wrapped

        make_callback = make
    armed = fallback.arm_wrapper(wrapper, entry, make_callback)
    if armed and ctx is not None:
        speed.attach(ctx, eager, entry)
    return armed


# --- the hook on torch._dynamo.optimize ---------------------------------------------------------


class Plan:
    __slots__ = ("caller_mod", "caller_qual", "where", "sglang_caller")

    def __init__(self, caller_mod, caller_qual, where, sglang_caller):
        self.caller_mod, self.caller_qual, self.where = caller_mod, caller_qual, where
        self.sglang_caller = sglang_caller


class _Deferred:
    """What the hook returns: torch's context, decided when it is applied to what it compiles."""

    __slots__ = ("_hook", "_plan", "_args", "_kwargs", "_ctx")

    def __init__(self, hook, plan, args, kwargs):
        self._hook, self._plan, self._args, self._kwargs, self._ctx = hook, plan, args, kwargs, None

    def _torch_ctx(self):
        if self._ctx is None:
            self._ctx = self._hook.original(*self._args, **self._kwargs)
        return self._ctx

    def __call__(self, model):
        return self._hook.compile(model, self._plan, self._args, self._kwargs, self._torch_ctx)

    def __enter__(self):
        return self._torch_ctx().__enter__()

    def __exit__(self, *exc):
        return self._torch_ctx().__exit__(*exc)

    def __getattr__(self, name):
        return getattr(self._torch_ctx(), name)


class Interceptor:
    """Listens on ``torch._dynamo.optimize`` while npu_compat is active on NPU.

    ``decide(model, site, target, caller_module, caller_qualname, backend)``
    returns ``(why, by, kept)``: why it runs eagerly (None: compiled), by what
    (record / setting), and why ``NPU_COMPAT_EAGER=all`` kept it compiled.
    ``entry(site, target, where, backend, source, when)`` gives the audit
    entry of a site (one per site and place).
    """

    def __init__(self, torch, dynamo, watched, decide, entry):
        self.torch, self.dynamo = torch, dynamo
        self.original = dynamo.optimize
        self.watched = frozenset(watched)
        self.decide, self.entry = decide, entry
        self.installed = None

    def install(self):
        global _WATCHED
        _WATCHED = tuple(self.watched)
        original, hook = self.original, self

        def optimize(*args, **kwargs):
            if hook.installed is not optimize:  # uninstalled: a kept reference is torch's own
                return original(*args, **kwargs)
            try:
                plan = hook.plan()
            except Exception:
                plan = None
            if plan is None:
                return original(*args, **kwargs)
            return _Deferred(hook, plan, args, kwargs)

        for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
            setattr(optimize, attr, getattr(original, attr, None))
        optimize.__wrapped__ = original
        optimize._npu_compat = True
        self.dynamo.optimize = optimize
        self.installed = optimize

    def uninstall(self):
        if self.installed is not None and self.dynamo.__dict__.get("optimize") is self.installed:
            self.dynamo.optimize = self.original
        self.installed = None

    def plan(self):
        """Who compiles: None when neither the caller is sglang nor torch.compile is on the way."""
        via_compile = False
        f = sys._getframe(1).f_back  # optimize's caller (frame 1 is optimize itself)
        if f is not None and f.f_globals.get("__name__") == "torch" and f.f_code.co_name == "compile":
            via_compile = True  # torch.compile: what it compiles comes next, and may be sglang's
        caller = caller_frame(self.torch)
        name = caller.f_globals.get("__name__") if caller is not None else None
        name = name if isinstance(name, str) else "?"
        sglang_caller = _top(name) in self.watched
        if not (sglang_caller or via_compile):
            return None
        qual = frame_qualname(caller) if caller is not None else "?"
        line = caller.f_lineno if caller is not None else 0
        return Plan(name, qual, f"{name}:{qual}:{line}", sglang_caller)

    def compile(self, model, plan, args, kwargs, torch_ctx):
        if not (plan.sglang_caller or _top(owner_module(model)) in self.watched):
            return torch_ctx()(model)
        backend = args[0] if args else kwargs.get("backend", "inductor")
        site, target = site_of(model, plan.caller_mod, plan.caller_qual)
        entry = self.entry(site, target, plan.where, backend_name(backend), _wrappers.source_of(model, _watched_now()), "at definition")
        entry.seen(model)
        if kwargs.get("disable"):
            entry.made_eager("upstream", "upstream: disable= (sglang's own guard)")
            return torch_ctx()(model)
        why, by, kept = self.decide(model, site, target, plan.caller_mod, plan.caller_qual, backend)
        if why is not None:
            entry.made_eager(by, why)
            try:
                audit.audit.made_eager[id(model)] = model
            except TypeError:  # not weakly referable
                pass
            return self.original(*args, **dict(kwargs, disable=True))(model)  # the function itself
        entry.kept = kept
        if not entry.fallback:
            return torch_ctx()(model)
        inner = backend
        if isinstance(inner, str):
            lookup = getattr(sys.modules.get("torch._dynamo.backends.registry"), "lookup_backend", None)
            inner = lookup(inner) if lookup is not None else None
        if inner is None or not callable(inner) or fallback.unavailable() is not None:
            return torch_ctx()(model)
        wrapped = fallback.Backend(inner, entry)
        if args:
            args = (wrapped,) + tuple(args[1:])
        else:
            kwargs = dict(kwargs, backend=wrapped)
        ctx = self.original(*args, **kwargs)
        fallback.arm_context(ctx, entry, wrapped)  # before it is applied: torch's wrapper reads the callback then
        speed.attach(ctx, model, entry)  # NPU_COMPAT_SPEED: nothing unless asked for
        return ctx(model)
