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
* compiled, with a **fallback**: the backend is wrapped to notice a failing
  compile or a failing first run of the compiled graph, and the compiled
  function is wrapped so that such a failure serves the call with the eager
  function, and every later call of that site too (one WARNING per site).

How a compile failure is told from the function's own error, and when the
call may be run again: see :func:`_verdict`.  Sites compiled before npu_compat
watched (late activation) get the same wrapper from the walk; on their first
call it recompiles them through the wrapped backend (the backend torch.compile
made is read from the wrapper's context), so they are covered the same way.
"""

import _thread
import sys
from types import FunctionType, MethodType

from npu_compat import _log, _wrappers, audit

NPU_BACKEND_NAMES = frozenset(("npu", "npugraph_ex", "npugraphs", "torchair"))
NPU_BACKEND_PACKAGES = frozenset(("torchair", "torch_npu"))

_lock = _thread.allocate_lock()  # held only to flip a site to eager, never around a call
_tls = _thread._local()  # .note: the last failure the wrapped backend or a graph saw in this thread


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


def unwrapped(obj):
    """``obj`` under the ``functools.wraps`` layers of plain functions (``torch.no_grad()(fn)``)."""
    for _ in range(8):
        if type(obj) is not FunctionType:
            break
        inner = obj.__dict__.get("__wrapped__")
        if inner is None:
            break
        obj = inner
    return obj


def site_of(model, caller_mod, caller_qual):
    """``(site, target)``: the ``module:qualname`` a user pins, and what is compiled."""
    obj = unwrapped(model)
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


def backend_name(backend):
    if backend is None:
        return "inductor"
    if isinstance(backend, str):
        return backend
    name = getattr(type(backend), "__dict__", {}).get("compiler_name") or getattr(backend, "__dict__", {}).get(
        "compiler_name"
    )
    if isinstance(name, str):
        return name
    fn = getattr(backend, "func", backend)  # functools.partial
    name = getattr(fn, "__name__", None)
    return name if isinstance(name, str) else type(backend).__qualname__


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
    obj = unwrapped(model)
    if type(obj) is MethodType:
        obj = obj.__self__
    return isinstance(obj, module_type)


# --- the fallback ----------------------------------------------------------------------------


class _Note:
    __slots__ = ("exc", "stage", "mutates", "runs")

    def __init__(self, exc, stage, mutates):
        self.exc, self.stage, self.mutates, self.runs = exc, stage, mutates, _runs[0]


# Graph runs in this process (any thread; a race only ever makes a rerun look unsafe).
_runs = [0]


def _frames_ok():
    """dynamo's count of frames it converted successfully (any thread), or -1."""
    utils = sys.modules.get("torch._dynamo.utils")
    try:
        return utils.counters["frames"]["ok"]
    except Exception:
        return -1


class Backend:
    """A backend that notes its own failures and those of the graphs it compiled.

    No ``__getattr__``: dynamo probes backends with ``hasattr`` and follows
    chains of attributes, so only what torch.compile's own backend objects
    offer is copied (``compiler_name``, ``get_compiler_config``, ``reset``,
    ``backend_ctx_ctor``).
    """

    def __init__(self, inner, entry):
        self.inner, self.entry = inner, entry
        self.compiler_name = backend_name(inner)
        ctor = getattr(inner, "backend_ctx_ctor", None)
        if ctor is not None:
            self.backend_ctx_ctor = ctor

    def __call__(self, gm, example_inputs, *args, **kwargs):
        try:
            compiled = self.inner(gm, example_inputs, *args, **kwargs)
        except Exception as exc:
            _tls.note = _Note(exc, "compile", False)
            raise
        return _graph(_settled(compiled), _mutates(gm))

    def get_compiler_config(self):
        get = getattr(self.inner, "get_compiler_config", None)
        return get() if callable(get) else None

    def reset(self):
        reset = getattr(self.inner, "reset", None)
        if callable(reset):
            reset()

    def __eq__(self, other):
        return type(other) is Backend and other.inner == self.inner and other.entry is self.entry

    def __hash__(self):
        return hash((id(self.entry), id(self.inner)))


def _settled(compiled):
    """A lazy graph module's real forward (dynamo does this itself when it sees one).

    Backends that hand the FX graph back (dynamo's ``eager``, a stub) return
    ``_lazy_forward``, which recompiles the module's code on first use and then
    checks on every call; wrapped, dynamo no longer sees it, so it is settled here.
    """
    owner = getattr(compiled, "__self__", None)
    if getattr(compiled, "__name__", None) != "_lazy_forward" or owner is None:
        return compiled
    try:
        from torch.fx._lazy_graph_module import _LazyGraphModule

        if isinstance(owner, _LazyGraphModule):
            _LazyGraphModule.force_recompile(owner)
            return owner.forward
    except Exception:
        pass
    return compiled


def _graph(compiled, mutates):
    state = [False]  # has this graph run once without error?

    def run(*args):
        _runs[0] += 1
        try:
            out = compiled(*args)
        except Exception as exc:
            _tls.note = _Note(exc, "run" if state[0] else "first run", mutates)
            raise
        state[0] = True
        return out

    d = getattr(compiled, "__dict__", None)
    if isinstance(d, dict):
        run.__dict__.update(d)  # _boxed_call and the like: dynamo reads them
    run._npu_compat_graph = True
    return run


_GRAPH_CODES = frozenset(c for c in _graph.__code__.co_consts if getattr(c, "co_name", None) == "run")


def _mutates(gm):
    """Whether a dynamo graph may write into its inputs (an in-place op, setitem, ``out=``)."""
    import operator

    try:
        for node in gm.graph.nodes:
            if node.op not in ("call_function", "call_method"):
                continue
            target = node.target
            name = target if isinstance(target, str) else getattr(target, "__name__", "")
            if target is operator.setitem or "out" in node.kwargs:
                return True
            if isinstance(name, str) and name.endswith("_") and not name.endswith("__"):
                return True
            schema = getattr(target, "_schema", None)
            if schema is not None and getattr(schema, "is_mutable", False):
                return True
        return False
    except Exception:
        return True  # cannot tell: assume it may


def _chain(exc):
    seen = []
    while exc is not None and len(seen) < 8 and all(exc is not s for s in seen):
        seen.append(exc)
        inner = exc.__dict__.get("inner_exception") if hasattr(exc, "__dict__") else None
        exc = inner or exc.__cause__ or exc.__context__
    return seen


def _dynamo_error(exc):
    exc_mod = sys.modules.get("torch._dynamo.exc")
    base = getattr(exc_mod, "TorchDynamoException", None)
    return base is not None and isinstance(exc, base)


_OUR_FILE = __file__.rsplit(".", 1)[0]


def _user_code_ran(tb, eager):
    """Whether a user frame other than the site's own is on a failed graph's traceback.

    Read from the wrapper down to the failing graph.  Frames of torch and
    npu_compat do not count, nor the site's own frame: dynamo's rewritten
    code calls its first graph before anything else.  A graph after a graph
    break runs in a resumed frame, and a callee's in the callee's: those
    count (code of the site ran before).
    """
    own = getattr(eager, "__code__", None)
    while tb is not None:
        frame = tb.tb_frame
        code = frame.f_code
        if code in _GRAPH_CODES or code is Backend.__call__.__code__:
            return False  # reached the failing graph or compile: nothing past here counts
        name = frame.f_globals.get("__name__")
        top = _top(name if isinstance(name, str) else "")
        if top not in ("torch", "npu_compat"):
            if not (own is not None and code.co_filename == own.co_filename and code.co_name == own.co_name):
                return True
        tb = tb.tb_next
    return False


def _verdict(exc, eager, mark):
    """Classify a failed call: ``(stage, rerun_safe, cause)``, or None for the function's own error.

    * The wrapped backend or a compiled graph noted this very exception (it is
      in the raised exception's chain): a compile failure (``compile``), or
      a failure of the graph's ``first run`` or a later ``run``.
    * A dynamo exception no backend noted: dynamo failed while tracing
      (``compile``).
    * Anything else came from the function's own code: None.

    Running the call again eagerly is safe only if nothing of the site ran
    before the failure.  ``mark`` is (frames dynamo converted, graphs run)
    at the start of the call.  A compile failure is safe when dynamo
    converted no frame and ran no graph since: the failure was in the
    conversion of the site's own frame, before it executed (a frame resumed
    after a graph break, or a callee, is converted only after the site's
    frame was).  A graph's failure is safe when it was the first graph of
    the call, no user frame but the site's own is on its traceback
    (:func:`_user_code_ran`), and the graph writes into none of its inputs.
    Another thread compiling or running at the same moment only ever makes
    a call look unsafe.
    """
    note = getattr(_tls, "note", None)
    _tls.note = None
    chain = _chain(exc)
    if note is not None and any(e is note.exc for e in chain):
        stage, mutates, cause = note.stage, note.mutates, note.exc
    elif any(_dynamo_error(e) for e in chain):
        stage, mutates, cause = "compile", False, exc
    else:
        return None
    frames0, runs0 = mark
    if stage == "compile":
        safe = frames0 >= 0 and _frames_ok() == frames0 and _runs[0] == runs0
    else:
        first = note.runs == runs0 + 1
        tb = exc.__traceback__.tb_next if exc.__traceback__ else None
        safe = first and not mutates and not _user_code_ran(tb, eager)
    return stage, safe, cause


def first_line(exc):
    text = str(exc).strip().splitlines()
    return (text[0] if text else "")[:300]


def guard(compiled, eager, entry, rebuild=None):
    """``compiled`` with the fallback: on a compile failure the call is served by ``eager``.

    ``rebuild`` (late activation): a callable giving a recompiled function
    whose backend is wrapped; used on the first call when the site has not
    been compiled yet.
    """
    current = [compiled, rebuild]

    def compiled_with_fallback(*args, **kwargs):
        if entry.fell_back is not None:
            return eager(*args, **kwargs)
        if current[1] is not None:
            _rebuild(current)
        mark = (_frames_ok(), _runs[0])
        try:
            return current[0](*args, **kwargs)
        except Exception as exc:
            verdict = _verdict(exc, eager, mark)
            if verdict is None or not entry.fallback:
                raise
            stage, safe, cause = verdict
            if not safe:
                fell_back(entry, stage, cause, rerun=False)
                raise
            try:
                out = eager(*args, **kwargs)
            except Exception:
                raise  # the function fails eagerly too: its own error, not the compiler's
            fell_back(entry, stage, cause, rerun=True)
            return out

    d = compiled.__dict__ if type(compiled) is FunctionType else {}
    compiled_with_fallback.__dict__.update(d)  # _torchdynamo_orig_callable, _torchdynamo_inline, ...
    for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
        try:
            setattr(compiled_with_fallback, attr, getattr(eager, attr))
        except Exception:
            pass
    compiled_with_fallback.__wrapped__ = eager
    compiled_with_fallback._torchdynamo_orig_callable = eager
    compiled_with_fallback._torchdynamo_inline = eager  # a compiled caller traces the eager code
    compiled_with_fallback._npu_compat_fallback = entry
    return compiled_with_fallback


# The code of every fallback wrapper: the late walk finds them by it, as it finds torch's.
GUARD_CODE = next(c for c in guard.__code__.co_consts if getattr(c, "co_name", None) == "compiled_with_fallback")


def _rebuild(current):
    with _lock:
        make, current[1] = current[1], None
    if make is None:
        return
    try:
        new = make()
    except Exception as exc:
        _log.debug("npu_compat: could not recompile through the fallback backend: %s", exc)
        return
    if new is not None:
        current[0] = new


def fell_back(entry, stage, exc, rerun):
    """Flip ``entry`` to eager for good; one WARNING per site and process."""
    with _lock:
        if entry.fell_back is not None:
            return
        entry.set_fell_back(
            {"stage": stage, "type": type(exc).__name__, "message": first_line(exc)},
            f"torch.compile failed on NPU ({stage}): npu_compat fell back to eager",
        )
    what = "this call was served eagerly" if rerun else "this call raised the error (it may have changed its inputs)"
    _log.warning(
        "npu_compat: torch.compile of %s (%s) failed on NPU at %s: %s: %s; %s and later calls run eagerly "
        "in this process. To make it eager from the start: NPU_COMPAT_EAGER=%s",
        entry.site, entry.source, stage, type(exc).__name__, _log.short(first_line(exc)), what, entry.site,
    )  # fmt: skip


# --- late activation: a site compiled before npu_compat watched ------------------------------


def rebuilder(wrapper, eager, entry, optimize):
    """A callable that recompiles ``wrapper``'s function through the fallback backend, or None.

    Reads the backend torch.compile made from the wrapper's context
    (``callback._torchdynamo_orig_backend`` down to the backend object), and
    ``fullgraph``/``dynamic``; where torch keeps them elsewhere, None.
    """
    ctx = _wrappers.optimize_context(wrapper)
    if ctx is None:
        return None
    d = vars(ctx)
    backend, hops = _wrappers.user_backend(ctx)
    if backend is None or hops < 2 or "fullgraph" not in d or "_dynamic" not in d:
        return None
    fullgraph, dynamic = d["fullgraph"], d["_dynamic"]
    code = getattr(eager, "__code__", None)

    def make():
        get = getattr(sys.modules.get("torch._dynamo.eval_frame"), "_debug_get_cache_entry_list", None)
        if code is None or get is None or len(get(code)) > 0:
            return None  # already compiled by the old wrapper: keep it
        return optimize(backend=Backend(backend, entry), nopython=fullgraph, dynamic=dynamic)(eager)

    return make


def is_fallback(obj):
    return type(obj) is FunctionType and "_npu_compat_fallback" in obj.__dict__


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
        # dynamo's frame callback is active while a compiled function runs, so it
        # would trace the graph wrapper's own frame on every call (guard checks
        # cost more than the call): tell it to run that code as it is.
        skip = getattr(sys.modules.get("torch._dynamo.eval_frame"), "skip_code", None)
        for code in _GRAPH_CODES if callable(skip) else ():
            try:
                skip(code)
            except Exception:
                pass

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
        entry = self.entry(site, target, plan.where, backend_name(backend), source_of(model), "at definition")
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
        if inner is None or not callable(inner):
            return torch_ctx()(model)
        wrapped = Backend(inner, entry)
        if args:
            args = (wrapped,) + tuple(args[1:])
        else:
            kwargs = dict(kwargs, backend=wrapped)
        compiled = self.original(*args, **kwargs)(model)
        if type(compiled) is FunctionType:
            return guard(compiled, model, entry)
        return compiled


def source_of(obj):
    """``file:line`` of what is compiled, the path from its package's directory."""
    obj = unwrapped(obj)
    if type(obj) is MethodType:
        obj = unwrapped(obj.__func__)
    code = getattr(obj, "__code__", None) if type(obj) is FunctionType else None
    if code is None:
        return "?"
    path = code.co_filename.replace("\\", "/")
    for top in _watched_now():
        cut = path.rfind(f"/{top}/")
        if cut >= 0:
            path = path[cut + 1 :]
            break
    return f"{path}:{code.co_firstlineno}"
