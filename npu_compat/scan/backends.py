"""Where does ``backend=EXPR`` send NPU: to its own compiler, or to the same one as everywhere?

``NPU_ROUTE``: NPU's own compiler (sglang's ``get_compiler_backend()``,
torchair's, a torch_npu backend name); the site still compiles on NPU, so
the verdict is ``npu-backend``, never ``guarded``.  ``SAME``: the backend
every device gets.  ``BUNK``: cannot tell.
"""

import ast

from .bindings import EXTERNAL, LOCAL, MODULE, STAR
from .devices import BUNK, F, NPU_BACKEND_FUNCS, NPU_BACKEND_NAMES, NPU_ROUTE, SAME, T, mentions_npu
from .evaluate import MAX_DEPTH, chain_of, not_module_level, text


class Routes:
    """backend= expressions judged with a :class:`~.evaluate.Truth` for the conditions in them."""

    def __init__(self, truth):
        self.truth = truth
        self.project = truth.project
        self._memo = {}
        self._busy = set()

    def route(self, mb, node, depth=0):
        if depth > MAX_DEPTH:
            return BUNK, "expression too deeply nested"
        t = type(node)
        if t is ast.Constant:
            if isinstance(node.value, str) and node.value in NPU_BACKEND_NAMES:
                return NPU_ROUTE, "an NPU backend"
            return SAME, "constant"
        if t is ast.Name:
            return self.name_route(mb, node.id)
        if t is ast.Call or t is ast.Attribute:
            return self._called(mb, node, depth)
        if t is ast.IfExp:
            kind, note = self.truth.truth(mb, node.test, depth + 1)
            if kind == T:
                return self.route(mb, node.body, depth + 1)
            if kind == F:
                return self.route(mb, node.orelse, depth + 1)
            a, b = self.route(mb, node.body, depth + 1), self.route(mb, node.orelse, depth + 1)
            if a[0] == b[0]:
                return a
            return BUNK, f"depends on {text(node.test)} ({note})"
        return BUNK, f"cannot evaluate {text(node)}"

    def _called(self, mb, node, depth):
        chain = chain_of(node.func if isinstance(node, ast.Call) else node)
        if chain is not None:
            dotted = self.truth.dotted(mb, chain) or ".".join(chain)
            if chain[-1] in NPU_BACKEND_FUNCS or dotted.split(".")[0] == "torchair":
                return NPU_ROUTE, "NPU-aware backend"
            if isinstance(node, ast.Call) and len(chain) == 1:
                res = self.truth.resolve(mb, chain[0])
                if res.kind == LOCAL and res.name in res.bindings.defs:
                    found = self.truth.returns(res.bindings, res.bindings.defs[res.name], self.route, depth)
                    if found is not None and found[0] != BUNK:
                        return found
        return BUNK, f"{text(node)} is computed at run time"

    def name_route(self, mb, name):
        key = (mb.name, name)
        memo = self._memo.get(key)
        if memo is not None:
            return memo
        if key in self._busy:
            return BUNK, f"{name!r} is defined in terms of itself"
        self._busy.add(key)
        try:
            result = self._name_route(mb, name)
        finally:
            self._busy.discard(key)
        self._memo[key] = result
        return result

    def _name_route(self, mb, name):
        res = self.truth.resolve(mb, name)
        if res.kind == LOCAL:
            owner, bound = res.bindings, res.name
            if bound in owner.assigns:
                vals = [
                    self.route(owner, v, 1) if v is not None else (BUNK, f"{bound!r} is bound by unpacking or a loop")
                    for v in owner.assigns[bound]
                ]
                if len({k for k, _ in vals}) == 1:
                    return vals[0]
                return BUNK, f"{bound!r} is assigned different backends"
            return SAME, f"custom backend {bound}"
        if res.kind in (EXTERNAL, STAR):
            orig = res.dotted.rsplit(".", 1)[-1] if res.kind == EXTERNAL else name
            if orig in NPU_BACKEND_FUNCS or res.dotted.split(".")[0] == "torchair":
                return NPU_ROUTE, "NPU backend"
            if mentions_npu(name) or mentions_npu(orig):
                return NPU_ROUTE, f"naming guess: {name!r} reads as an NPU backend"
            src = res.dotted.rsplit(".", 1)[0] if res.kind == EXTERNAL else res.dotted
            return BUNK, f"{name!r} is imported from {src}, which is not in the scan"
        if res.kind == MODULE:
            return BUNK, f"{name!r} is a module"
        if mentions_npu(name):
            return NPU_ROUTE, f"naming guess: {name!r} reads as an NPU backend"
        return BUNK, not_module_level(name)

