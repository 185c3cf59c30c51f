"""The binding model: what each module-level name is bound to, and where.

One :class:`ModuleBindings` per parsed module (assignments, ``def``/``class``,
imports, star imports, and names a function rebinds through ``global``);
a :class:`Project` holds every module of the scan and follows a name across
modules (``from .common import _is_npu``, a re-export through an
``__init__``), parsing a module only when a lookup first needs it.
Nothing is imported or executed.
"""

import ast
import bisect
import re

_DEF_TYPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_FUNC_TYPES = (ast.FunctionDef, ast.AsyncFunctionDef)
_GLOBAL = re.compile(rb"global[ \t]+\w")


class ImportRef:
    """``name`` bound by an import: ``target`` is the absolute dotted name it refers to."""

    __slots__ = ("target", "is_module", "orig", "source")

    def __init__(self, target, is_module, orig, source):
        self.target = target  # "torch" for `import torch`; "pkg.mod.name" for `from pkg.mod import name`
        self.is_module = is_module  # `import x` (a module); a from-import may still name a submodule
        self.orig = orig  # the name in the source module
        self.source = source  # the module a from-import reads from, else None


def absolute(level, module, current, is_package):
    """Absolute module of ``from {'.' * level}{module} import ...`` in ``current``;
    keeps the leading dots when ``current`` is not known deeply enough."""
    if level == 0:
        return module or ""
    parts = current.split(".") if current else []
    if not is_package:
        parts = parts[:-1]
    if level - 1 >= len(parts):  # above the top package: Python refuses it; keep it unresolved
        return "." * level + (module or "")
    base = parts[: len(parts) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def record_import(node, into, current=None, is_package=False):
    """Add the names an import statement binds to ``into`` (first binding wins)."""
    if isinstance(node, ast.Import):
        for a in node.names:
            if a.asname:
                into.setdefault(a.asname, ImportRef(a.name, True, a.name.rsplit(".", 1)[-1], None))
            else:
                top = a.name.split(".", 1)[0]
                into.setdefault(top, ImportRef(top, True, top, None))
        return ()
    src = absolute(node.level, node.module, current, is_package)
    stars = []
    for a in node.names:
        if a.name == "*":
            stars.append(src)
        else:
            into.setdefault(a.asname or a.name, ImportRef(f"{src}.{a.name}", False, a.name, src))
    return stars


class ModuleBindings:
    """Module-level bindings of one parsed module."""

    def __init__(self, tree, name, is_package, source=None):
        self.tree = tree
        self.name = name
        self.is_package = is_package
        self.assigns = {}  # name -> [value expr, or None when bound by unpacking/loop/with]
        self.defs = {}  # name -> FunctionDef / ClassDef
        self.imports = {}  # name -> ImportRef
        self.stars = []  # modules of `from X import *`, in order
        self.rebinds = {}  # name -> [(function name, value or None)] through `global`
        self._aliases = None  # {name: api.Alias}, filled by api.module_aliases
        self._collect(tree.body)
        self.source = source
        lines = global_lines(source) if source is not None else [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Global)]
        if lines:
            self._collect_rebinds(tree, lines)

    def bound(self, name):
        return name in self.assigns or name in self.defs or name in self.imports

    def _collect(self, body):
        stack = list(reversed(body))
        while stack:
            st = stack.pop()
            t = type(st)
            if t is ast.Assign:
                for tgt in st.targets:
                    bind_target(self.assigns, tgt, st.value)
            elif t is ast.AnnAssign:
                if st.value is not None:
                    bind_target(self.assigns, st.target, st.value)
            elif t is ast.AugAssign:
                bind_target(self.assigns, st.target, st.value)
            elif t in (ast.Import, ast.ImportFrom):
                self.stars += record_import(st, self.imports, self.name, self.is_package)
            elif t in _DEF_TYPES:
                self.defs[st.name] = st
            elif t in (ast.For, ast.AsyncFor):
                bind_target(self.assigns, st.target, None)
                stack.extend(reversed(st.body + st.orelse))
            elif t in (ast.With, ast.AsyncWith):
                for item in st.items:
                    if item.optional_vars is not None:
                        bind_target(self.assigns, item.optional_vars, None)
                stack.extend(reversed(st.body))
            elif t in (ast.If, ast.While):
                stack.extend(reversed(st.body + st.orelse))
            elif t is ast.Try or type(st).__name__ == "TryStar":
                inner = list(st.body)
                for h in st.handlers:
                    inner += h.body
                stack.extend(reversed(inner + st.orelse + st.finalbody))

    def _collect_rebinds(self, tree, lines):
        # `global X` in a function makes every assignment to X there a
        # run-time rebinding of the module's X (sglang's capture-mode flag).
        # Only the functions around a `global` line are walked.
        stack = [tree]
        while stack:
            node = stack.pop()
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt) and _spans(child, lines):
                    if isinstance(child, _FUNC_TYPES):
                        self._rebinds_in(child)
                    stack.append(child)

    def _rebinds_in(self, fn):
        names = set()
        for node in own_nodes(fn):
            if isinstance(node, ast.Global):
                names.update(node.names)
        if not names:
            return
        found = {}
        for node in own_nodes(fn):
            if isinstance(node, ast.Assign):
                for tgt in node.targets:
                    bind_target(found, tgt, node.value)
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign)) and getattr(node, "value", None) is not None:
                bind_target(found, node.target, node.value)
            elif isinstance(node, (ast.For, ast.AsyncFor)):
                bind_target(found, node.target, None)
            elif isinstance(node, (ast.With, ast.AsyncWith)):
                for item in node.items:
                    if item.optional_vars is not None:
                        bind_target(found, item.optional_vars, None)
        for name, values in found.items():
            if name in names:
                self.rebinds.setdefault(name, []).extend((fn.name, v) for v in values)


def _spans(node, lines):
    i = bisect.bisect_left(lines, node.lineno)
    return i < len(lines) and lines[i] <= (node.end_lineno or node.lineno)


def global_lines(source):
    """Line numbers of ``global`` statements in the source bytes (a superset: strings may match too)."""
    out, pos, line = [], 0, 1
    for m in _GLOBAL.finditer(source):
        before = source[source.rfind(b"\n", 0, m.start()) + 1 : m.start()].strip()
        if before and before[-1:] not in (b":", b";"):
            continue  # not a statement: part of a name or of other code
        line += source.count(b"\n", pos, m.start())
        pos = m.start()
        out.append(line)
    return out


def own_nodes(fn):
    """Nodes of a function's body, not descending into nested functions or classes."""
    stack = list(fn.body)
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, _DEF_TYPES + (ast.Lambda,)):
                stack.append(child)


def bind_target(into, target, value):
    if isinstance(target, ast.Name):
        into.setdefault(target.id, []).append(value)
    elif isinstance(target, (ast.Tuple, ast.List)):
        values = value.elts if isinstance(value, (ast.Tuple, ast.List)) else None
        if values is not None and len(values) != len(target.elts):
            values = None
        for i, elt in enumerate(target.elts):
            bind_target(into, elt, values[i] if values is not None else None)
    elif isinstance(target, ast.Starred):
        bind_target(into, target.value, None)


# What a name resolves to.
LOCAL, MODULE, EXTERNAL, UNBOUND, STAR = "local", "module", "external", "unbound", "star"


class Resolved:
    """The end of a name's import chain: ``kind`` and where."""

    __slots__ = ("kind", "bindings", "name", "dotted", "via")

    def __init__(self, kind, bindings=None, name=None, dotted=None, via=()):
        self.kind = kind
        self.bindings = bindings  # ModuleBindings holding the binding (LOCAL)
        self.name = name  # the name there
        self.dotted = dotted  # MODULE: the module; EXTERNAL: "module.attr"; STAR: the unscanned module
        self.via = via  # modules passed through, for reasons


class Project:
    """Every module of one scan, by dotted name; parsed on first use."""

    def __init__(self, load):
        self._load = load  # callable(module name) -> ModuleBindings or None (not parsable)
        self.paths = {}  # module name -> file (only modules whose name is known)
        self._parsed = {}

    def add(self, module, path):
        if module:
            self.paths.setdefault(module, path)

    def put(self, module, bindings):
        if module:
            self._parsed[module] = bindings

    def get(self, module):
        """The module's bindings; None when it is not in the scan or does not parse."""
        if module in self._parsed:
            return self._parsed[module]
        if module not in self.paths:
            return None
        self._parsed[module] = None  # a cycle through the loader ends here
        self._parsed[module] = self._load(module)
        return self._parsed[module]

    def has_module(self, dotted):
        return dotted in self.paths

    def resolve(self, module, name, _seen=None):
        """Follow ``name`` in ``module`` through imports to where it is bound."""
        seen = _seen if _seen is not None else set()
        if (module, name) in seen:
            return Resolved(UNBOUND, name=name, via=(module,))
        seen.add((module, name))
        mb = self.get(module)
        if mb is None:
            if self.has_module(f"{module}.{name}"):
                return Resolved(MODULE, dotted=f"{module}.{name}")
            return Resolved(EXTERNAL, dotted=f"{module}.{name}")
        if name in mb.assigns or name in mb.defs:
            return Resolved(LOCAL, mb, name)
        imp = mb.imports.get(name)
        if imp is not None:
            if imp.is_module:
                return Resolved(MODULE, dotted=imp.target)
            if self.has_module(imp.target):  # from pkg import submodule
                return Resolved(MODULE, dotted=imp.target)
            if imp.source and not imp.source.startswith(".") and (
                self.has_module(imp.source) or imp.source in self._parsed
            ):
                found = self.resolve(imp.source, imp.orig, seen)
                if found.kind != UNBOUND:
                    found.via = (module,) + found.via
                    return found
            return Resolved(EXTERNAL, dotted=imp.target)
        for star in reversed(mb.stars):
            if self.has_module(star):
                found = self.resolve(star, name, seen)
                if found.kind != UNBOUND:
                    found.via = (module,) + found.via
                    return found
            elif not star.startswith("."):
                return Resolved(STAR, name=name, dotted=star)
        return Resolved(UNBOUND, name=name, via=(module,))
