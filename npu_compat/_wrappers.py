"""What an object is to torch.compile, read without importing torch or calling foreign code.

``torch.compile(fn)`` and ``torch.compiler.disable(fn)`` both return a plain
Python function carrying ``_torchdynamo_orig_callable`` (the original), so
that attribute alone cannot tell a compiled site from one made eager on
purpose.  The compile wrapper also carries ``_is_torch_compile`` (torch
2.6 and later); in every torch 2.x release the wrapper closes over the
context that made it, an ``OptimizeContext`` or a ``DisableContext``, which
is what decides here when the marker is missing.

Only a function's own ``__dict__`` and closure cells are read: never
``getattr`` on a foreign object, whose ``__getattr__`` may import modules
(sglang keeps lazy-import proxies among its globals).
"""

from types import FunctionType, MethodType

PLAIN = "plain"  # a Python function with no torch wrapper: eager
COMPILED = "compiled"  # a torch.compile wrapper
DISABLED = "disabled"  # a torch.compiler.disable / torch._dynamo.disable wrapper: eager on purpose
WRAPPED = "wrapped"  # a torch wrapper npu_compat cannot tell apart: treated as compiled
OTHER = "other"  # not a Python function (a class, a C function, an nn.Module, ...)

ORIG = "_torchdynamo_orig_callable"


def _contexts(fn):
    for cell in fn.__closure__ or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        name = type(value).__name__
        if name in ("OptimizeContext", "DisableContext"):
            yield name


def optimize_context(fn):
    """The ``OptimizeContext`` a torch.compile wrapper closes over, or None."""
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if type(value).__name__ == "OptimizeContext":
            return value
    return None


def user_backend(ctx):
    """``(backend, hops)``: the backend under an OptimizeContext's callback, through
    ``_torchdynamo_orig_backend`` (hops: how many layers were passed)."""
    backend, hops = getattr(ctx, "__dict__", {}).get("callback"), 0
    while hops < 6 and "_torchdynamo_orig_backend" in getattr(backend, "__dict__", {}):
        backend, hops = backend.__dict__["_torchdynamo_orig_backend"], hops + 1
    return backend, hops


def kind(obj):
    """Classify ``obj``: PLAIN, COMPILED, DISABLED, WRAPPED or OTHER."""
    if type(obj) is not FunctionType:
        return OTHER
    attrs = obj.__dict__
    if ORIG not in attrs:
        return WRAPPED if "__wrapped__" in attrs and "_torchdynamo_inline" in attrs else PLAIN
    if attrs.get("_torchdynamo_disable"):
        return DISABLED
    if attrs.get("_is_torch_compile"):
        return COMPILED
    ctx = set(_contexts(obj))
    if ctx == {"DisableContext"}:
        return DISABLED
    if ctx == {"OptimizeContext"}:
        return COMPILED
    return WRAPPED


def is_compiled(obj):
    """True for a torch.compile wrapper (or a torch wrapper that cannot be told apart)."""
    return kind(obj) in (COMPILED, WRAPPED)


def eager_of(obj):
    """The original function a compile wrapper runs, or None."""
    if type(obj) is not FunctionType:
        return None
    orig = obj.__dict__.get(ORIG)
    return orig if callable(orig) else None


def provably_plain(obj):
    """True only for a plain Python function that no torch wrapper has touched."""
    return kind(obj) == PLAIN and "__wrapped__" not in obj.__dict__


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


def source_of(obj, watched=("sglang",)):
    """``file:line`` of what is compiled, the path from its package's directory."""
    obj = unwrapped(obj)
    if type(obj) is MethodType:
        obj = unwrapped(obj.__func__)
    code = getattr(obj, "__code__", None) if type(obj) is FunctionType else None
    if code is None:
        return "?"
    path = code.co_filename.replace("\\", "/")
    for top in watched:
        cut = path.rfind(f"/{top}/")
        if cut >= 0:
            path = path[cut + 1 :]
            break
    return f"{path}:{code.co_firstlineno}"
