"""On NPU: an sglang compile that fails falls back to eager at the unit that failed.

Dynamo converts one frame at a time, just before the frame runs (a frame
resumed after a graph break, and a callee that was not inlined, are
converted when they are reached), and a backend compiles one graph before
that graph runs.  So a failure is caught where nothing of it has run yet,
and nothing of the host program is ever executed twice:

* **a frame whose conversion fails** (dynamo's tracing, or the backend's
  compile, which dynamo raises from the conversion): :class:`FrameGuard`
  wraps torch's own frame callback of the site and answers "run this frame
  as it is": the frame runs eagerly from its start.
* **a graph that fails on its first run** (torchair builds its GE graph
  then): the graph is run again eagerly (its FX graph, op by op) only when
  that cannot repeat an effect: the inputs it may write were copied before
  the run (at most :data:`SNAPSHOT_LIMIT` bytes, never a KV cache) and are
  put back, and the random state is put back.  The NPU is blamed only when
  that eager run succeeds; when it fails too, the eager error is the
  program's own and reaches the caller, and the site stays compiled.  When
  the graph writes more than can be copied, the original error is raised
  and later calls run eagerly.
* **a failure after a graph has run once** is the program's: it reaches the
  caller unchanged.

After a fallback the site runs eagerly: new frames are not converted, and
the graphs already compiled for it run their FX graphs eagerly.  There is
no wrapper around the compiled function: the site stays torch's own
compile wrapper (``torch.compiler.disable``, ``torch._dynamo.run``,
recompiling with another backend all work as for any compiled function).
A graph's wrapper is on the call's path until the graph's first successful
run only (:func:`_step_aside`).

Errors the user asked dynamo for (``RecompileError`` under
``error_on_recompile``, the ``fail_on_recompile`` stance, a shape
``ConstraintViolationError``) pass through untouched.  Nothing is kept
after the call: no exception, traceback or tensor.

Needs torch's frame-execution strategies (``torch._dynamo.types.
ConvertFrameReturn``, torch 2.6 and later); without them there is no
fallback at all (:func:`unavailable` says why).
"""

import _thread
import operator
import sys

from npu_compat import _log

# What may be copied to make a failed first run repeatable: the inputs a graph may write.
SNAPSHOT_LIMIT = 64 << 20

_lock = _thread.allocate_lock()  # held only to flip a site, never around a call
_on = [True]  # False after deactivate(): every guard passes straight through
_armed = []  # (cell, ctx, original callback, guard): late-route sites armed in place

# Exceptions the user asked for: never a compile failure of the NPU's.
_PASS_THROUGH = ("RecompileError", "FailOnRecompileLimitHit", "ConstraintViolationError", "ResumePrologueTracingError")


def first_line(exc):
    text = str(exc).strip().splitlines()
    return (text[0] if text else "")[:300]


# --- what the design needs from torch -----------------------------------------------------------

_support = []  # [(run_eagerly, None)] or [(None, why)] once asked


def unavailable():
    """Why this torch gets no fallback (a line), or None when it does."""
    return _strategy()[1]


def _strategy():
    """``(what a callback returns to run a frame eagerly, None)``, or ``(None, why not)``; never raises."""
    if _support:
        return _support[0]
    try:
        from torch._dynamo.types import ConvertFrameReturn, FrameAction, FrameExecStrategy

        skip = FrameAction.SKIP
        run_eagerly = ConvertFrameReturn(frame_exec_strategy=FrameExecStrategy(skip, skip), apply_to_code=False)
        out = (run_eagerly, None)
    except Exception as exc:
        version = getattr(sys.modules.get("torch"), "__version__", "?")
        out = (None, f"torch {version} has no frame strategies ({type(exc).__name__}): no fallback")
    _support.append(out)
    return out


def unavailable_cheaply():
    """:func:`unavailable` without importing dynamo: from torch's version while dynamo is not loaded.

    None when the fallback is there, or nothing can be said yet (torch not imported)."""
    if "torch._dynamo" in sys.modules:
        return unavailable()
    version = getattr(sys.modules.get("torch"), "__version__", None)
    if not isinstance(version, str):
        return None
    try:
        major, minor = (int(p) for p in version.split("+")[0].split(".")[:2])
    except ValueError:
        return None
    return f"torch {version} is older than 2.6: no fallback" if (major, minor) < (2, 6) else None


# --- the frame: a conversion that fails runs the frame eagerly -------------------------------------


class FrameGuard:
    """torch's frame callback of one site, with the fallback.

    Called by dynamo for each frame the site's call reaches that has no
    compiled code yet.  ``_torchdynamo_orig_backend`` points where torch's
    callback points, so dynamo finds the same backend behind it (its cache
    and its stances read that chain).

    Under ``fullgraph=True`` torch raises after the call when no frame was
    compiled, so a frame cannot simply run eagerly there: the conversion is
    done again with the site's :class:`Backend` handing each graph back to
    run as it is (eager, through dynamo's code).  Without that Backend (a
    late site compiled already), or when dynamo itself cannot trace the
    frame, the error reaches the caller; nothing of the frame has run.
    """

    def __init__(self, inner, entry, backend=None, fullgraph=False, make=None):
        self.inner, self.entry, self.backend, self.fullgraph = inner, entry, backend, bool(fullgraph)
        self.make = make  # late route: builds (callback, Backend) on the first conversion
        d = getattr(inner, "__dict__", {})
        for attr in ("_torchdynamo_orig_backend", "hooks", "__wrapped__"):
            if attr in d:
                setattr(self, attr, d[attr])

    def _made(self):
        make, self.make = self.make, None
        if make is None:
            return
        try:
            made = make()
        except Exception as exc:
            _log.debug("npu_compat: could not wrap the backend of %s: %s", self.entry.site, exc)
            return
        if made is not None:
            self.inner, self.backend = made

    def __call__(self, frame, cache_entry, frame_state, *args, **kwargs):
        if self.make is not None:
            with _lock:
                self._made()
        entry = self.entry
        if entry.fell_back is not None and _on[0]:
            if not self.fullgraph:
                return _strategy()[0]  # the site runs eagerly now: convert nothing more
            if self.backend is not None:
                self.backend.eager = True
        try:
            return self.inner(frame, cache_entry, frame_state, *args, **kwargs)
        except Exception as exc:
            if not _on[0] or not entry.fallback or type(exc).__name__ in _PASS_THROUGH:
                raise
            run_eagerly = _strategy()[0]
            if run_eagerly is None:
                raise
            if not self.fullgraph:
                fell_back(entry, "compile", exc, "this frame ran eagerly from its start")
                return run_eagerly
            if self.backend is None or self.backend.eager:
                raise
            self.backend.eager = True  # convert again, each graph handed back to run as it is
            try:
                out = self.inner(frame, cache_entry, frame_state, *args, **kwargs)
            except Exception:
                self.backend.eager = False
                raise exc from None  # dynamo cannot trace it either way: nothing of the frame ran
            fell_back(entry, "compile", exc, "this call ran its graph eagerly")
            return out
        # (exc is unbound here: nothing of the failure outlives this call)


def arm_context(ctx, entry, backend=None):
    """Early route: ``ctx`` (torch's OptimizeContext, not yet applied) gets a :class:`FrameGuard`."""
    d = getattr(ctx, "__dict__", {})
    callback = d.get("callback")
    if callback is None or _strategy()[0] is None or type(callback) is FrameGuard:
        return False
    ctx.callback = FrameGuard(callback, entry, backend, d.get("fullgraph"))
    return True


def arm_wrapper(wrapper, entry, make_callback=None):
    """Late route: torch's compile ``wrapper`` gets a :class:`FrameGuard` in place.

    torch's wrapper keeps its callback in a closure cell; the guard goes into
    that cell and into the context, so every binding of the wrapper (early
    imports by name included) is covered without being replaced.
    ``make_callback()`` may give ``(callback, backend)``: a callback whose
    backend is a :class:`Backend`; it is called on the site's first
    conversion, and gives None when the site has compiled already.  Returns
    True when armed (or already armed).
    """
    if _strategy()[0] is None:
        return False
    ctx = cell = None
    for c in getattr(wrapper, "__closure__", None) or ():
        try:
            value = c.cell_contents
        except ValueError:
            continue
        if type(value).__name__ == "OptimizeContext":
            ctx = value
    callback = getattr(ctx, "__dict__", {}).get("callback") if ctx is not None else None
    for c in wrapper.__closure__ or ():
        try:
            if callback is not None and c.cell_contents is callback:
                cell = c
        except ValueError:
            continue
    if cell is None:
        return False
    if type(callback) is FrameGuard:
        return True
    # The wrapped backend's callback is built on the site's first conversion, not now:
    # building it costs about 2 ms a site (the backend's compiler config), and most
    # sites found by the late walk are compiled once, long after activation.
    guard = FrameGuard(callback, entry, None, vars(ctx).get("fullgraph"), make_callback)
    cell.cell_contents = guard
    ctx.callback = guard
    _armed.append((cell, ctx, callback, guard))
    return True


def is_armed(wrapper):
    for c in getattr(wrapper, "__closure__", None) or ():
        try:
            if type(c.cell_contents) is FrameGuard:
                return True
        except ValueError:
            continue
    return False


def disarm():
    """deactivate(): guards pass through; late-route wrappers get torch's callback back."""
    _on[0] = False
    while _armed:
        cell, ctx, callback, guard = _armed.pop()
        try:
            if cell.cell_contents is guard:
                cell.cell_contents = callback
            if ctx.__dict__.get("callback") is guard:
                ctx.callback = callback
        except Exception:
            pass


def rearm():
    _on[0] = True


# --- the graph: a first run that fails -----------------------------------------------------------


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


class Backend:
    """A site's backend: each graph it compiles gets a wrapper that watches its first run.

    A failing compile is left to raise: dynamo raises it from the frame's
    conversion, where :class:`FrameGuard` runs the frame eagerly.  No
    ``__getattr__``: dynamo probes backends with ``hasattr``, so only what
    torch.compile's own backend objects offer is copied.
    """

    def __init__(self, inner, entry):
        self.inner, self.entry = inner, entry
        self.eager = False  # hand each graph back to run as it is (a fullgraph site that fell back)
        self.compiler_name = backend_name(inner)
        ctor = getattr(inner, "backend_ctx_ctor", None)
        if ctor is not None:
            self.backend_ctx_ctor = ctor

    def __call__(self, gm, example_inputs, *args, **kwargs):
        if self.eager and _on[0]:
            return graph(_settled(gm.forward), gm, self.entry)
        compiled = self.inner(gm, example_inputs, *args, **kwargs)
        return graph(_settled(compiled), gm, self.entry)

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
    """A lazy graph module's real forward (dynamo does this itself when it sees one unwrapped)."""
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


def graph(compiled, gm, entry):
    """``compiled`` (one graph), with its first run watched and, after a fallback, run eagerly."""
    writes = written_inputs(gm)  # placeholder positions it may write, or None: cannot tell
    state = [False]  # has it run once without error?
    eager = _settled(getattr(gm, "forward", gm))  # the graph op by op (no nn.Module call machinery)

    def run(*args):
        if entry.fell_back is not None and _on[0]:
            return eager(*args)  # the site fell back: its compiled graphs run eagerly too
        if state[0] or not _on[0] or not entry.fallback:
            return compiled(*args)
        out = _first_run(compiled, eager, entry, writes, state, args)
        _step_aside(run, compiled, entry)
        return out

    d = getattr(compiled, "__dict__", None)
    if isinstance(d, dict):
        run.__dict__.update(d)
    run._npu_compat_graph = True
    return run


# Graphs whose wrapper stepped aside: id(entry) -> [weak reference to dynamo's disable
# wrapper of the graph], whose ``_npu_compat_graph`` is (run, compiled): a fallback
# puts ``run`` back.  Nothing here outlives dynamo's own graph (torch._dynamo.reset()).
_direct = {}


def _step_aside(run, compiled, entry):
    """After a graph's first successful run, dynamo calls the compiled graph itself.

    Dynamo keeps each compiled graph as a global of the frame's module
    (``__compiled_fn_...``), behind its ``disable`` wrapper, whose closure
    holds ``run``; that cell now gets ``compiled``, so later calls pay no
    frame of npu_compat's.  A fallback of the site later puts the graph's
    eager function there (:func:`fell_back`).  Where that layout is not
    found, ``run`` stays (it only checks two flags).
    """
    try:
        f = sys._getframe(2)
        for _ in range(4):
            if f is None:
                return
            g = f.f_globals
            for key in [k for k in g if type(k) is str and k.startswith("__compiled_fn")]:
                top = g[key]
                cell = _cell_holding(top, run)
                if cell is not None:
                    import weakref

                    with _lock:
                        if entry.fell_back is None:
                            top._npu_compat_graph = (run, compiled)
                            cell.cell_contents = compiled
                            refs = _direct.setdefault(id(entry), [])
                            refs[:] = [r for r in refs if r() is not None] + [weakref.ref(top)]
                    return
            f = f.f_back
    except Exception:
        return


def _cell_holding(fn, target, depth=3):
    for _ in range(depth):
        cells = getattr(fn, "__closure__", None) if type(fn).__name__ == "function" else None
        if not cells:
            return None
        nxt = None
        for c in cells:
            try:
                v = c.cell_contents
            except ValueError:
                continue
            if v is target:
                return c
            if type(v).__name__ == "function" and v.__closure__:
                nxt = v
        fn = nxt
    return None


def _first_run(compiled, eager, entry, writes, state, args):
    saved = _snapshot(args, writes)
    try:
        out = compiled(*args)
    except Exception as exc:
        error = exc
    else:
        state[0] = True
        if not entry.ran:
            entry.set_ran()  # a site's first successful run: the audit's answer changed
        return out
    try:
        if saved is None:
            fell_back(entry, "first run", error, "its error was raised (it may have written its inputs)")
            raise error
        _restore(saved)
        try:
            out = eager(*args)
        except Exception:
            raise  # fails eagerly too: the program's own error, not the compiler's; the site stays
        fell_back(entry, "first run", error, "the graph ran eagerly (its inputs and random state put back first)")
        return out
    finally:
        error = saved = None  # nothing of the failure outlives the call


def _snapshot(args, writes):
    """What it takes to repeat a graph run: copies of the inputs it may write, the random state."""
    import torch

    if writes is None:
        return None
    copies, total = [], 0
    for i in writes:
        if i >= len(args) or not isinstance(args[i], torch.Tensor):
            return None
        t = args[i]
        total += t.numel() * t.element_size()
        if total > SNAPSHOT_LIMIT:
            return None
        copies.append((t, t.detach().clone()))
    devices = {a.device for a in args if isinstance(a, torch.Tensor) and a.device.type != "cpu"}
    rng = [(None, torch.random.get_rng_state())]
    for dev in devices:
        module = getattr(torch, dev.type, None)
        get = getattr(module, "get_rng_state", None)
        if get is None:
            return None
        try:
            rng.append((dev, get(dev.index) if dev.index is not None else get()))
        except Exception:
            return None
    return copies, rng


def _restore(saved):
    import torch

    copies, rng = saved
    with torch.no_grad():
        for t, copy in copies:
            t.copy_(copy)
    for dev, state in rng:
        if dev is None:
            torch.random.set_rng_state(state)
        else:
            module = getattr(torch, dev.type)
            if dev.index is not None:
                module.set_rng_state(state, dev.index)
            else:
                module.set_rng_state(state)


# Python's in-place operators: dynamo records `x += y` on a tensor as operator.iadd.
_INPLACE_OPERATORS = frozenset(
    getattr(operator, n)
    for n in (
        "iadd", "isub", "imul", "imatmul", "itruediv", "ifloordiv", "imod", "ipow",
        "ilshift", "irshift", "iand", "ior", "ixor", "setitem", "delitem",
    )
)  # fmt: skip
_PURE_MODULES = ("torch", "operator", "math", "builtins", "_operator")


def _writes(node):
    """The argument nodes ``node`` may write into ([] for none), or None: it may write anything."""
    if node.op == "call_module":
        return None
    if node.op not in ("call_function", "call_method"):
        return []
    target = node.target
    args, kwargs = node.args, node.kwargs
    first = [args[0]] if args else [kwargs.get("input", kwargs.get("self"))]
    if target in _INPLACE_OPERATORS or target is setattr:
        return first
    name = target if isinstance(target, str) else getattr(target, "__name__", "")
    if not isinstance(name, str):
        return None
    out = []
    if "out" in kwargs:
        out.append(kwargs["out"])
    if kwargs.get("inplace") is True:
        out += first
    if (name.endswith("_") and not name.endswith("__")) or (name.startswith("__i") and name.endswith("__")):
        out += first  # add_, relu_, __iadd__, ...
    if type(target).__name__ == "OpOverloadPacket":  # torch.ops.ns.op: any of its overloads
        schemas = [getattr(getattr(target, o, None), "_schema", None) for o in target.overloads()]
        return None if any(getattr(s, "is_mutable", True) for s in schemas) else out
    schema = getattr(target, "_schema", None)
    if schema is not None:
        if getattr(schema, "is_mutable", False):
            return None  # an op that writes some argument: any of them
        return out
    if node.op == "call_method":
        return out
    mod = getattr(target, "__module__", None) or ""
    if mod.partition(".")[0] not in _PURE_MODULES or "higher_order" in mod or type(target).__name__.endswith("Operator"):
        return None  # a function dynamo put in the graph as is (allow_in_graph), a higher-order op
    return out


def written_inputs(gm):
    """Positions of the graph's placeholders it may write (through any alias), or None: cannot tell.

    An alias of an input can only be made from that input, so a written
    node's ancestry holds every input it may alias.
    """
    try:
        nodes = list(gm.graph.nodes)
        placeholders = [n for n in nodes if n.op == "placeholder"]
        written = []
        for node in nodes:
            w = _writes(node)
            if w is None:
                return None
            written += [a for a in w if hasattr(a, "op")]
        if not written:
            return ()
        index = {n: i for i, n in enumerate(placeholders)}
        out, seen, todo = set(), set(), list(written)
        while todo:
            n = todo.pop()
            if n in seen:
                continue
            seen.add(n)
            if n.op == "placeholder":
                out.add(index[n])
            elif n.op == "get_attr":
                return None  # a module's own tensor: not among the inputs to copy
            todo.extend(n.all_input_nodes)
        return tuple(sorted(out))
    except Exception:
        return None


# --- the verdict ------------------------------------------------------------------------------------


def fell_back(entry, stage, exc, what):
    """Flip ``entry`` to eager for good; one WARNING per site and process."""
    inner = getattr(exc, "__dict__", {}).get("inner_exception")  # BackendCompilerFailed: the backend's own
    exc = inner if isinstance(inner, BaseException) else exc
    with _lock:
        if entry.fell_back is not None:
            return
        for ref in _direct.pop(id(entry), ()):
            top = ref()
            run, compiled = getattr(top, "_npu_compat_graph", (None, None))
            cell = _cell_holding(top, compiled) if compiled is not None else None
            if cell is not None:
                cell.cell_contents = run  # its wrapper again: graphs that ran compiled run eagerly now
        entry.set_fell_back(
            {"stage": stage, "type": type(exc).__name__, "message": first_line(exc)},
            f"torch.compile failed on NPU ({stage}): npu_compat fell back to eager",
        )
    _log.warning(
        "npu_compat: torch.compile of %s (%s) failed on NPU at %s: %s: %s; %s, and later calls run eagerly "
        "in this process. To make it eager from the start: NPU_COMPAT_EAGER=%s",
        entry.site, entry.source, stage, type(exc).__name__, _log.short(first_line(exc)), what, entry.site,
    )  # fmt: skip
