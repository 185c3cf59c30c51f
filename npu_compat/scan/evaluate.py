"""Is an expression true when the code runs on an NPU machine?

:class:`Truth` answers with one of ``T`` (true on NPU), ``F`` (false on NPU),
``FLAG`` (a run-time value that does not depend on the device) or ``UNK``
(cannot tell: a name that cannot be resolved), with a note saying why.
Names are read from the binding model (:mod:`.bindings`), across modules
of the scan; a name rebound through ``global`` is a run-time flag, not the
constant it starts as.
"""

import ast
import builtins

from .bindings import EXTERNAL, LOCAL, MODULE, STAR
from .devices import F, FLAG, GUESS, T, UNK, device_by_name, device_string, guessed, known_check, merge
from .devices import SGLANG_CHECKS, truth_of_device

MAX_DEPTH = 60
_EQ_OPS = (ast.Eq, ast.Is, ast.In)
_NE_OPS = (ast.NotEq, ast.IsNot, ast.NotIn)


def chain_of(node):
    """Identifiers of a dotted name (``torch.npu.is_available``), or None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return parts[::-1]


def text(node, limit=80):
    """Source-like text of a node, shortened for a table cell."""
    try:
        s = ast.unparse(node)
    except Exception:  # unparse of odd trees must not sink the scan
        s = f"<{type(node).__name__}>"
    s = " ".join(s.split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def not_module_level(name):
    return f"{name!r} is not bound at module level (a parameter or local?)"


class Truth:
    """Truth of expressions on NPU, for every module of one :class:`~.bindings.Project`."""

    def __init__(self, project):
        self.project = project
        self._memo = {}
        self._busy = set()

    def resolve(self, mb, name):
        return self.project.resolve(mb.name, name)

    def dotted(self, mb, chain):
        """``torch.npu.is_available`` for a chain whose base is a module or an imported name."""
        res = self.resolve(mb, chain[0])
        if res.kind in (MODULE, EXTERNAL):
            return ".".join([res.dotted] + chain[1:])
        return None

    def known(self, mb, name):
        return self.resolve(mb, name).kind in (LOCAL, MODULE, EXTERNAL, STAR) or hasattr(builtins, name)

    def truth(self, mb, node, depth=0):
        if depth > MAX_DEPTH:
            return UNK, "expression too deeply nested"
        t = type(node)
        if t is ast.Constant:
            return (T if node.value else F), "constant"
        if t is ast.Name:
            return self.name_truth(mb, node.id)
        if t is ast.Attribute:
            return self._attribute(mb, node, depth)
        if t is ast.Call:
            return self._call(mb, node, depth)
        if t is ast.UnaryOp:
            kind, note = self.truth(mb, node.operand, depth + 1)
            if isinstance(node.op, ast.Not) and kind in (T, F):
                return (F if kind == T else T), note
            return kind, note
        if t is ast.BoolOp:
            vals = [self.truth(mb, v, depth + 1) for v in node.values]
            kinds = [k for k, _ in vals]
            decisive = T if isinstance(node.op, ast.Or) else F
            for k in (decisive, UNK, FLAG):
                if k in kinds:
                    return vals[kinds.index(k)]
            return vals[-1]
        if t is ast.Compare:
            found = _compared_device(node)
            if found is not None:
                return found
        if t is ast.IfExp:
            kind, note = self.truth(mb, node.test, depth + 1)
            if kind == T:
                return self.truth(mb, node.body, depth + 1)
            if kind == F:
                return self.truth(mb, node.orelse, depth + 1)
            return merge([(kind, note), self.truth(mb, node.body, depth + 1), self.truth(mb, node.orelse, depth + 1)])
        if t is ast.NamedExpr:
            return self.truth(mb, node.value, depth + 1)
        # Anything else is a run-time value, unless it leans on a name we cannot resolve.
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                sub = self.truth(mb, child, depth + 1)
                if sub[0] == UNK:
                    return sub
        return FLAG, "runtime value"

    def _attribute(self, mb, node, depth):
        chain = chain_of(node)
        if chain is None:
            sub = self.truth(mb, node.value, depth + 1)
            return sub if sub[0] == UNK else (FLAG, "runtime value")
        dotted = self.dotted(mb, chain)
        dev = known_check(dotted) if dotted else None
        if dev:
            return truth_of_device(dev, f"{dev} check")
        if self.known(mb, chain[0]):
            return FLAG, "runtime value"
        dev = device_by_name(chain[-1])
        if dev:
            return guessed(".".join(chain), dev, "an attribute of a run-time object")
        return UNK, not_module_level(chain[0])

    def _call(self, mb, node, depth):
        chain = chain_of(node.func)
        if chain is None:
            sub = self.truth(mb, node.func, depth + 1)
            return sub if sub[0] == UNK else (FLAG, "runtime value")
        dotted = self.dotted(mb, chain)
        dev = known_check(dotted) if dotted else None
        if dev:
            return truth_of_device(dev, f"{dev} check")
        name = chain[0]
        if len(chain) == 1:
            res = self.resolve(mb, name)
            if res.kind == LOCAL and res.name in res.bindings.defs:
                return self._def_call(res.bindings, res.bindings.defs[res.name], depth)
            if res.kind in (EXTERNAL, STAR):
                dev = device_by_name(name) or device_by_name(res.dotted.rsplit(".", 1)[-1])
                if dev:
                    return guessed(name + "()", dev, "it is not defined in the scan")
                return FLAG, f"result of {name}()"
            if res.kind != LOCAL and hasattr(builtins, name) and name in ("bool", "hasattr", "getattr"):
                for a in node.args:
                    if isinstance(a, ast.Constant) and isinstance(a.value, str) and device_string(a.value):
                        return truth_of_device(device_string(a.value), "device attribute check")
                if name == "bool" and node.args:
                    return self.truth(mb, node.args[0], depth + 1)
        elif chain[-1] == "startswith" and node.args:
            a = node.args[0]
            if isinstance(a, ast.Constant) and isinstance(a.value, str) and device_string(a.value) == a.value.lower():
                return truth_of_device(a.value.lower(), "device comparison")
        dev = device_by_name(chain[-1])
        if dev and len(chain) > 1:
            return guessed(".".join(chain) + "()", dev, "a method of a run-time object")
        if self.known(mb, name):
            return FLAG, f"result of {'.'.join(chain)}()"
        if dev:
            return guessed(name + "()", dev, "it is not bound in the module")
        return UNK, not_module_level(name)

    def _def_call(self, owner, fn, depth):
        """Truth of calling a function of the scan: its returns, followed on NPU."""
        if (owner.name or "").split(".")[0] == "sglang" and fn.name in SGLANG_CHECKS:
            return truth_of_device(SGLANG_CHECKS[fn.name], f"{SGLANG_CHECKS[fn.name]} check")
        found = self.returns(owner, fn, self.truth, depth)
        if found is not None and found[0] in (T, F):
            return found
        dev = device_by_name(fn.name)
        if dev:
            return guessed(fn.name + "()", dev, "its returns do not decide it")
        return found if found is not None else (FLAG, f"result of {fn.name}()")

    def returns(self, owner, fn, evaluate, depth):
        """What ``fn`` returns when run on NPU, by ``evaluate``; None for a class or recursion."""
        key = ("def", owner.name, fn.name, evaluate.__name__)
        if not isinstance(fn, ast.FunctionDef) or key in self._busy:
            return None
        self._busy.add(key)
        try:
            return returns_on_npu(self, owner, fn, evaluate, depth)
        finally:
            self._busy.discard(key)

    def name_truth(self, mb, name):
        key = (mb.name, name)
        memo = self._memo.get(key)
        if memo is not None:
            return memo
        if key in self._busy:
            return UNK, f"{name!r} is defined in terms of itself"
        self._busy.add(key)
        try:
            result = _name_truth(self, mb, name)
        finally:
            self._busy.discard(key)
        self._memo[key] = result
        return result


def _name_truth(truth, mb, name):
    # what `name` is bound to, followed across modules (see Truth.name_truth)
    res = truth.resolve(mb, name)
    if res.kind == LOCAL:
        owner, bound = res.bindings, res.name
        if bound not in owner.assigns:
            return FLAG, "runtime value"
        vals = [
            truth.truth(owner, v, 1) if v is not None else (UNK, f"{bound!r} is bound by unpacking or a loop")
            for v in owner.assigns[bound]
        ]
        rebinds = owner.rebinds.get(bound)
        if rebinds:
            vals += [truth.truth(owner, v, 1) if v is not None else (FLAG, "loop value") for _, v in rebinds]
            if len({k for k, _ in vals}) > 1:
                return FLAG, f"{bound!r} is rebound at run time (`global {bound}` in {rebinds[0][0]}())"
            return vals[0]
        kinds = {k for k, _ in vals}
        dev = device_by_name(bound)
        if len(kinds) > 1 and dev and UNK not in kinds:
            # try: import torch_npu; _is_npu = True / except ImportError: _is_npu = False
            return guessed(bound, dev, "its assignments differ (e.g. try: import torch_npu)")
        return merge(vals)
    if res.kind == MODULE:
        return FLAG, "module object"
    orig = res.dotted.rsplit(".", 1)[-1] if res.dotted else name
    if res.kind == EXTERNAL:
        dev = known_check(res.dotted)
        if dev:
            return truth_of_device(dev, f"{dev} check")
        dev = device_by_name(name) or device_by_name(orig)
        if dev:
            return guessed(name, dev, "it is imported from outside the scan")
        src = res.dotted.rsplit(".", 1)[0]
        return UNK, f"{name!r} is imported from {src}, which is not in the scan"
    dev = device_by_name(name)
    if res.kind == STAR:
        if dev:
            return guessed(name, dev, f"it may come from `from {res.dotted} import *`, outside the scan")
        return UNK, f"{name!r} may come from `from {res.dotted} import *`, which is not in the scan"
    if hasattr(builtins, name):
        return FLAG, "runtime value"
    if dev:
        return guessed(name, dev, "it is not bound in the module")
    return UNK, not_module_level(name)


def returns_on_npu(truth, owner, fn, evaluate, depth):
    """Merge of what ``fn``'s reachable returns are by ``evaluate``, following
    the ``if``s whose test is decided on NPU (``if not hasattr(torch, "npu"):
    return False`` is skipped); None when it returns nothing it can see."""
    results, ended = _walk_returns(truth, owner, fn.body, evaluate, depth + 1)
    if not ended:
        results.append(evaluate(owner, ast.Constant(None), depth + 1))
    return merge(results) if results else None


def _walk_returns(truth, owner, body, evaluate, depth):
    results = []
    for st in body:
        t = type(st)
        if t is ast.Return:
            node = st.value if st.value is not None else ast.Constant(None)
            results.append(evaluate(owner, node, depth))
            return results, True
        if t is ast.Raise:
            return results, True
        if t is ast.If:
            kind, _ = truth.truth(owner, st.test, depth)
            branches = [st.body] if kind == T else [st.orelse] if kind == F else [st.body, st.orelse]
            ends = []
            for b in branches:
                r, e = _walk_returns(truth, owner, b, evaluate, depth)
                results += r
                ends.append(e)
            if all(ends):
                return results, True
        elif t in (ast.With, ast.AsyncWith, ast.Try) or t.__name__ == "TryStar":
            r, e = _walk_returns(truth, owner, st.body, evaluate, depth)
            results += r
            if e and t is not ast.Try:
                return results, True
        elif t in (ast.For, ast.While, ast.AsyncFor):
            results += _walk_returns(truth, owner, st.body, evaluate, depth)[0]
        elif t is ast.Expr and isinstance(st.value, (ast.Yield, ast.YieldFrom)):
            return [(FLAG, "a generator")], True
    return results, False


def _compared_device(node):
    """``device == "npu"``, ``dev.type != "cuda"``, ``x in ("cuda", "hip")``."""
    if len(node.ops) != 1 or not isinstance(node.ops[0], _EQ_OPS + _NE_OPS):
        return None
    devs = []
    for side in (node.left, node.comparators[0]):
        elts = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
        for e in elts:
            if isinstance(e, ast.Constant) and isinstance(e.value, str) and device_string(e.value):
                devs.append(device_string(e.value))
    if not devs:
        return None
    hit = "npu" in devs
    if isinstance(node.ops[0], _NE_OPS):
        hit = not hit
    return (T if hit else F), "device comparison"


def is_guess(note):
    return note.startswith(GUESS)
