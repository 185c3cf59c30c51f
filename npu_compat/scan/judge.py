"""From a site's conditions and ``disable=``/``backend=`` arguments to its verdict and reason."""

import ast

from .bindings import bind_target, own_nodes
from .devices import BUNK, F, NPU_ROUTE, SAME, T, UNK
from .evaluate import is_guess, text
from .verdicts import GUARDED, NPU_BACKEND, UNGUARDED, UNKNOWN

# The upstream record behind the npu-backend verdict (sglang's history).
NPU_BACKEND_EVIDENCE = (
    "NPU still compiles this site, with torchair; upstream had to add disable=_is_npu to sites "
    "that already used this backend (sglang PRs #16115, #18553, #26573)"
)


def _guess(note):
    return f" ({note})" if is_guess(note) else ""


def _guard_reason(g, kind, note):
    cond = text(g.test)
    line = getattr(g.test, "lineno", "?")
    if g.kind == "alias":
        where = f"{g.label.name} is {g.label.api} only when `{cond}` is {'true' if g.in_body else 'false'}"
        return f"{where} (line {line}), and it is {'true' if kind == T else 'false'} on NPU{_guess(note)}"
    if g.kind == "return":
        branch = "else-branch" if g.in_body else "body"
        return (f"after `if {cond}:` (line {line}), whose {branch} leaves the function or loop; "
                f"{'true' if kind == T else 'false'} on NPU{_guess(note)}")
    if g.in_body:
        return f"under `if {cond}:` (line {line}), false on NPU{_guess(note)}"
    return f"in the else-branch of `if {cond}:` (line {line}), true on NPU{_guess(note)}"


def local_binding(fn, name):
    """How function ``fn`` binds ``name``: ("param",), ("value", expr), ("def", node), ("many",), or None."""
    table = getattr(fn, "_scan_locals", None)  # kept on the node: freed with its tree
    if table is None:
        args = fn.args
        params = {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}
        params |= {a.arg for a in (args.vararg, args.kwarg) if a is not None}
        assigns, defs = {}, {}
        for node in own_nodes(fn):
            if isinstance(node, ast.Assign):
                for tgt in node.targets:
                    bind_target(assigns, tgt, node.value)
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign, ast.NamedExpr)) and node.value is not None:
                bind_target(assigns, node.target, node.value)
            elif isinstance(node, (ast.For, ast.AsyncFor)):
                bind_target(assigns, node.target, None)
            for child in ast.iter_child_nodes(node) if not isinstance(node, ast.expr) else ():
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    defs[child.name] = child
        for st in fn.body:
            if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defs[st.name] = st
        table = (params, assigns, defs)
        fn._scan_locals = table
    params, assigns, defs = table
    if name in params:
        return ("param",) if name not in assigns else ("many",)
    if name in defs:
        return ("def", defs[name])
    values = assigns.get(name)
    if values is None:
        return None
    return ("value", values[0]) if len(values) == 1 and values[0] is not None else ("many",)


def _local(functions, expr, what, evaluate, mb):
    """Evaluate ``expr`` (a disable= or backend= argument) with the enclosing functions' own bindings."""
    found = None
    if isinstance(expr, ast.Name):
        for fn in reversed(functions or ()):  # innermost first: closures see outer locals
            found = local_binding(fn, expr.id)
            if found is not None:
                break
    if found is None:
        return evaluate(mb, expr)
    if found[0] == "value":
        return evaluate(mb, found[1])
    if found[0] == "def":
        return (SAME, f"custom backend {expr.id}") if what == "backend" else (T, "function object")
    unknown = UNK if what == "disable" else BUNK
    if found[0] == "param":
        return unknown, f"{expr.id!r} is a parameter of {fn.name}()"
    return unknown, f"{expr.id!r} is bound more than once in {fn.name}()"


def judge(truth, routes, mb, site):
    """(verdict, reason, backend expr, disable expr) of one :class:`~.sites.RawSite`."""
    kw, star = {}, False
    for k in site.keywords:
        if k.arg is None:
            star = True
        else:
            kw[k.arg] = k.value
    if site.api == "torch._dynamo.optimize":
        star = star or any(type(a).__name__ == "Starred" for a in site.args)
    backend, disable = kw.get("backend"), kw.get("disable")
    if backend is None and site.api == "torch._dynamo.optimize" and site.args:
        if type(site.args[0]).__name__ != "Starred":
            backend = site.args[0]
    try:
        verdict, reason = _verdict(truth, routes, mb, site, backend, disable, star)
    except RecursionError:
        verdict, reason = UNKNOWN, "expression too deeply nested to evaluate"
    return verdict, reason, backend, disable


def _verdict(truth, routes, mb, site, backend, disable, star):
    if site.form == "value":
        return UNKNOWN, f"{site.api} is passed around as a value here; where it is applied is not followed"
    for g in reversed(site.guards):
        kind, note = truth.truth(g.bindings, g.test)
        if (g.in_body and kind == F) or (not g.in_body and kind == T):
            return GUARDED, _guard_reason(g, kind, note)
    d = b = None
    if disable is not None:
        d = _local(site.function, disable, "disable", truth.truth, mb)
        if d[0] == T:
            return GUARDED, f"disable={text(disable)} is true on NPU{_guess(d[1])}"
    if backend is not None:
        b = _local(site.function, backend, "backend", routes.route, mb)
    if d is not None and d[0] == UNK:
        return UNKNOWN, f"disable={text(disable)}: {d[1]}"
    if b is not None and b[0] == NPU_ROUTE:
        return NPU_BACKEND, f"backend={text(backend)} sends NPU to its own compiler{_guess(b[1])}: {NPU_BACKEND_EVIDENCE}"
    if b is not None and b[0] == BUNK:
        return UNKNOWN, f"backend={text(backend)}: {b[1]}"
    if star:
        return UNKNOWN, "**kwargs may set disable= or backend="
    if d is None:
        parts = ["no disable="]
    elif d[0] == F:
        parts = [f"disable={text(disable)} is false on NPU{_guess(d[1])}"]
    else:
        parts = [f"disable={text(disable)} does not depend on an NPU check"]
    if backend is None:
        parts.append("default backend (inductor)")
    elif isinstance(backend, ast.Constant) and backend.value == "eager":
        # dynamo's eager backend runs the captured graph as it is: no code is
        # generated, so NPU meets none of inductor's failures.  vllm-ascend
        # compiles with it on NPU on purpose.
        parts.append(f"backend={text(backend)}: dynamo traces it but generates no code (not inductor; "
                     "vllm-ascend uses this backend on NPU on purpose)")
    else:
        parts.append(f"backend={text(backend)} on every device")
    if site.alias is not None:
        parts.append(f"through {site.alias.name} = {site.alias.api}")
    return UNGUARDED, "; ".join(parts)
