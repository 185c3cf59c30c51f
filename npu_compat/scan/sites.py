"""Finding the sites: one walk over a parsed module that records every place
the compile API is applied, with the conditions that must hold to reach it.

A site's conditions (:class:`Guard`) are the enclosing ``if``/conditional
expressions, the early returns before it (``if _is_npu: return fn``), and
the condition of a conditional alias; :mod:`.judge` turns them into a verdict.
"""

import ast
import bisect

from .api import api_by_imports, module_aliases, resolve_alias
from .bindings import record_import
from .evaluate import text

_DEF_TYPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_ENDS = (ast.Return, ast.Raise, ast.Continue, ast.Break)


class Guard:
    """A condition on the way to a site: ``test`` is true there (``in_body``) or false."""

    __slots__ = ("test", "in_body", "kind", "bindings", "label")

    def __init__(self, test, in_body, kind, bindings, label=None):
        self.test, self.in_body, self.kind, self.bindings, self.label = test, in_body, kind, bindings, label


class RawSite:
    """A site as found, before its verdict."""

    __slots__ = ("node", "api", "form", "target", "scope", "guards", "keywords", "args", "bound", "alias", "function")

    def __init__(self, **kw):
        for key in self.__slots__:
            setattr(self, key, kw.get(key))


def terminates(stmts):
    """Whether running ``stmts`` never falls through to the next statement."""
    if not stmts:
        return False
    last = stmts[-1]
    if isinstance(last, _ENDS):
        return True
    return isinstance(last, ast.If) and terminates(last.body) and terminates(last.orelse)


class SiteFinder:
    """Every site of one module (``mb``), found in one pruned walk."""

    def __init__(self, project, mb, lines, alias_names):
        self.project = project
        self.mb = mb
        self.lines = lines  # sorted line numbers that can hold part of a site
        self.alias_names = alias_names
        self.local_imports = {}  # imports inside functions: only for spotting the API
        self.bound_name = {}  # id(call) -> module-level name it is assigned to
        self.handled = set()  # ids of nodes already reported (or not values)
        self.sites = []
        self.functions = []  # the enclosing function definitions, innermost last

    def find(self):
        for a in module_aliases(self.mb).values():
            self.handled.add(id(a.node))
        self._block(self.mb.tree.body, (), ())
        return self.sites

    # ---- the API, through imports and aliases ----

    def _api(self, func):
        """(api, alias or None) when ``func`` spells a compile entry point."""
        api = api_by_imports(func, self.mb.imports, self.local_imports)
        if api:
            return api, None
        if isinstance(func, ast.Name):
            alias = resolve_alias(self.project, self.mb, func.id, self.alias_names)
            if alias is not None:
                return alias.api, alias
        return None, None

    # ---- the walk ----

    def _block(self, stmts, scope, guards):
        for st in stmts:
            self._visit(st, scope, guards)
            if type(st) is ast.If:
                # `if _is_npu: return fn` guards everything after it.
                body, orelse = terminates(st.body), terminates(st.orelse)
                if body != orelse:
                    guards = guards + (Guard(st.test, orelse, "return", self.mb),)

    def _pruned(self, node, t):
        start = getattr(node, "lineno", None)
        if start is None:
            return False
        if t in _DEF_TYPES and node.decorator_list:
            start = min(start, node.decorator_list[0].lineno)
        i = bisect.bisect_left(self.lines, start)
        return i == len(self.lines) or self.lines[i] > (node.end_lineno or start)

    def _visit(self, node, scope, guards):
        t = type(node)
        if self._pruned(node, t):
            return
        if t in _DEF_TYPES:
            qual = scope + (node.name,)
            for dec in node.decorator_list:
                self._decorator(dec, node, qual, scope, guards)
                self._visit(dec, scope, guards)
            for field in ("args", "returns", "bases", "keywords"):
                sub = getattr(node, field, None)
                for s in sub if isinstance(sub, list) else [sub] if sub is not None else []:
                    self._visit(s, scope, guards)
            if t is ast.ClassDef:
                self._block(node.body, qual, guards)
            else:
                self.functions.append(node)
                self._block(node.body, qual + ("<locals>",), guards)
                self.functions.pop()
            return
        if t is ast.If or t is ast.IfExp:
            self._visit(node.test, scope, guards)
            body, orelse = (node.body, node.orelse) if t is ast.If else ([node.body], [node.orelse])
            self._block(body, scope, guards + (Guard(node.test, True, "if", self.mb),))
            self._block(orelse, scope, guards + (Guard(node.test, False, "if", self.mb),))
            return
        if t is ast.Call:
            self._call(node, scope, guards)
        elif t is ast.Assign:
            if not scope and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                self.bound_name[id(node.value)] = node.targets[0].id
        elif t is ast.Import or t is ast.ImportFrom:
            if scope:
                record_import(node, self.local_imports, self.mb.name, self.mb.is_package)
        elif (t is ast.Attribute or t is ast.Name) and id(node) not in self.handled:
            self._value(node, scope, guards)
        for name, value in ast.iter_fields(node):
            if isinstance(value, list):
                if value and isinstance(value[0], ast.stmt):
                    self._block(value, scope, guards)
                else:
                    for v in value:
                        if isinstance(v, ast.AST):
                            self._visit(v, scope, guards)
            elif isinstance(value, ast.AST):
                self._visit(value, scope, guards)

    def _decorator(self, dec, fn, qual, scope, guards):
        func = dec.func if isinstance(dec, ast.Call) else dec
        api, alias = self._api(func)
        if api is None:
            return
        self.handled.add(id(func))
        call = dec if isinstance(dec, ast.Call) else None
        if call is not None:
            self.handled.add(id(dec))
        self._add(dec, api, "decorator", ".".join(qual), scope, guards, call, fn.name if not scope else None, alias)

    def _call(self, node, scope, guards):
        if id(node) in self.handled:
            return
        inner = node.func
        # torch.compile(**opts)(fn) / torch._dynamo.optimize("inductor")(fn)
        if isinstance(inner, ast.Call) and id(inner) not in self.handled:
            api, alias = self._api(inner.func)
            if api and (api == "torch._dynamo.optimize" or not (inner.args and not isinstance(inner.args[0], ast.Starred))):
                self.handled.update((id(inner), id(inner.func)))
                target = text(node.args[0]) if node.args else "?"
                self._add(node, api, "call", target, scope, guards, inner, self.bound_name.get(id(node)), alias)
                return
        api, alias = self._api(inner)
        if api is None:
            return
        self.handled.update((id(node), id(inner)))
        if api != "torch._dynamo.optimize" and node.args:
            form, target = "call", text(node.args[0])  # fn, or *args
        else:
            form, target = "factory", "(returned decorator)"
        self._add(node, api, form, target, scope, guards, node, self.bound_name.get(id(node)), alias)

    def _value(self, node, scope, guards):
        """torch.compile used as a value (``COMPILERS = {"x": torch.compile}``): a site of unknown verdict."""
        api, alias = self._api(node)
        if api is None or alias is not None:
            return
        self.handled.add(id(node))
        self._add(node, api, "value", f"(used as a value: {text(node)})", scope, guards, None, None, None)

    def _add(self, node, api, form, target, scope, guards, call, bound, alias):
        if alias is not None:
            if alias.test is not None:
                guards = guards + (Guard(alias.test, alias.in_body, "alias", alias.bindings, alias),)
            if alias.keywords:
                call_kw = list(alias.keywords) + (list(call.keywords) if call is not None else [])
            else:
                call_kw = list(call.keywords) if call is not None else []
        else:
            call_kw = list(call.keywords) if call is not None else []
        self.sites.append(RawSite(
            node=node, api=api, form=form, target=target, scope=".".join(scope) if scope else "<module>",
            guards=guards, keywords=call_kw, args=list(call.args) if call is not None else [],
            bound=bound, alias=alias, function=tuple(self.functions),
        ))

