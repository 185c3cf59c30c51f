"""``npu-compat scan``: a static audit of the torch.compile sites in a source tree.

torch.compile is not fully supported on Ascend NPU, so every place that
compiles with the default backend on every device is a crash or slowdown
hazard there.  This module parses each ``.py`` file with :mod:`ast` (nothing
is imported or executed) and reports every site with a verdict:

``guarded``
    NPU never reaches the default compiler: ``disable=`` is true on NPU
    (``disable=_is_npu``, ``disable=True``, ``disable=not _is_cuda``), or
    ``backend=`` sends NPU to its own compiler (``get_compiler_backend()``,
    or an expression whose NPU branch names an NPU/torchair backend), or an
    enclosing ``if``/conditional expression excludes NPU (``if not _is_npu:``,
    ``if _is_cuda:``, the else-branch of ``if _is_npu:``).
``unguarded``
    compiled with an ordinary backend on NPU too: no ``disable=``, or one that
    is false on NPU or does not depend on a device check (a debug flag).
``unknown``
    it cannot tell: a name it cannot resolve within the module, a value
    imported from another module, ``**kwargs``; the reason says which.

Conditions are judged by evaluating them "as on an NPU machine": NPU checks
(``is_npu()``, ``_is_npu``, ``torch.npu.is_available()``, ``device == "npu"``)
are true, checks for other devices (``is_cuda()``, ``_is_hip``, ``"cuda"``)
are false, anything else is a runtime flag.  Hence ``disable=not _is_npu`` is
unguarded (it compiles exactly on NPU).  Names are resolved within the
module only (module-level assignments, defs and imports); a name that is
not bound there but reads as an NPU check (``_is_npu``) counts as one.

Spellings: ``@torch.compile``, ``@torch.compile(...)``, ``torch.compile(fn,
...)``, ``torch.compile(...)(fn)``, ``torch.compiler.compile`` (torch 2.13
exposes it as a thin wrapper of torch.compile), ``torch._dynamo.optimize(...)``
(the legacy entry point: it still compiles with inductor by default, and
older code uses it), under any import alias (``import torch as t``, ``from torch import compile as
tc``, ``import torch._dynamo as dynamo``).  Not sites: the builtin
``compile()``, ``re.compile``, ``nn.Module.compile``,
``torch.compiler.disable``/``torch._dynamo.disable``, and torch.compile
passed around as a value (``functools.partial(torch.compile, ...)``).

A site is "covered" when a registered npu_compat patch replaces it
(same dotted module and function); such sites are fixed at run time.
Stdlib only: the scanner must run where torch is missing or broken.
"""

import argparse
import ast
import bisect
import builtins
import gc
import io
import json
import os
import re
import sys
import time
import tokenize
import warnings
from importlib.machinery import PathFinder

GUARDED, UNGUARDED, UNKNOWN = "guarded", "unguarded", "unknown"
VERDICTS = (GUARDED, UNGUARDED, UNKNOWN)
FAIL_POLICIES = ("unguarded", "unknown", "never")

# Canonical dotted names that apply the compiler, after alias resolution.
_APIS = frozenset({"torch.compile", "torch.compiler.compile", "torch._dynamo.optimize"})

# Truth of an expression on an NPU machine.
_T, _F, _FLAG, _UNK = "true", "false", "flag", "unknown"
# Where a backend= expression sends NPU.
_NPU_ROUTE, _SAME, _BUNK = "npu", "same", "unknown"

_OTHER_DEVICES = frozenset({"cuda", "hip", "rocm", "xpu", "musa", "mps", "cpu", "hpu", "mlu"})
_PREFIXES = frozenset({"is", "use", "on", "has", "running"})
_SUFFIXES = frozenset({"available", "alike", "platform", "device", "enabled", "only"})
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
_EQ_OPS = (ast.Eq, ast.Is, ast.In)
_NE_OPS = (ast.NotEq, ast.IsNot, ast.NotIn)
_DEF_TYPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_MAX_DEPTH = 60
# Lines that can hold (part of) a site: the API words, imports (aliases), and
# names imported "compile as x".  Subtrees without such a line are not walked.
# Plain literals: re's fast substring search, unlike an alternation.
_CANDIDATE_WORDS = tuple(re.compile(w) for w in ("compile", "optimize", "import"))
_ALIASES = tuple(re.compile(w + r"\s+as\s+([A-Za-z_]\w*)") for w in ("compile", "optimize"))
_TEXT_MAX = 80

_device_cache = {}


def _device_of(ident):
    """'npu', another device name, or None: what check an identifier reads as.

    Split into words so that ``input`` is not ``npu``.  Any word ``npu``
    (or ``torchair``) counts; other devices only as the whole name, give or
    take an ``is_``/``_available`` (``_is_cuda``, ``is_cuda_alike``), so
    that ``use_cuda_graph`` is not a device check.
    """
    if ident in _device_cache:
        return _device_cache[ident]
    words = [w.lower() for w in _WORDS.findall(ident)]
    dev = None
    if "npu" in words or "torchair" in words:
        dev = "npu"
    else:
        while words and words[0] in _PREFIXES:
            words.pop(0)
        while words and words[-1] in _SUFFIXES:
            words.pop()
        if len(words) == 1 and words[0] in _OTHER_DEVICES:
            dev = words[0]
    _device_cache[ident] = dev
    return dev


def _device_truth(dev, why):
    return (_T, why) if dev == "npu" else (_F, why)


def _text(node):
    """Source-like text of a node, shortened for a table cell."""
    try:
        s = ast.unparse(node)
    except Exception:  # unparse of odd trees must not sink the scan
        s = f"<{type(node).__name__}>"
    s = " ".join(s.split())
    return s if len(s) <= _TEXT_MAX else s[: _TEXT_MAX - 3] + "..."


class Site:
    """One place where torch.compile (or an alias) is applied."""

    __slots__ = (
        "path", "module", "line", "col", "api", "form", "target", "scope",
        "backend", "disable", "verdict", "reason", "covered_by",
    )

    def __init__(self, **kw):
        for key in self.__slots__:
            setattr(self, key, kw.get(key))

    def as_dict(self):
        return {key: getattr(self, key) for key in self.__slots__}

    def __repr__(self):
        return f"<Site {self.path}:{self.line} {self.target} {self.verdict}>"


class Report:
    """What a scan found: sites, files skipped, and the totals."""

    def __init__(self):
        self.sites = []
        self.errors = []  # {"path": ..., "error": ...}, one per skipped file
        self.files_scanned = 0  # parsed
        self.roots = []
        self.elapsed = 0.0
        self.registry_error = None

    @property
    def files_skipped(self):
        return len(self.errors)

    def counts(self):
        out = {v: 0 for v in VERDICTS}
        for s in self.sites:
            out[s.verdict] += 1
        return out

    def unguarded_covered(self):
        return sum(1 for s in self.sites if s.verdict == UNGUARDED and s.covered_by)

    def failing(self, policy):
        """Sites (and, for 'unknown', skipped files) that make ``policy`` fail.

        Sites a registered patch covers never fail: they are fixed at run time.
        """
        if policy == "never":
            return []
        bad = (UNGUARDED,) if policy == "unguarded" else (UNGUARDED, UNKNOWN)
        out = [s for s in self.sites if s.verdict in bad and not s.covered_by]
        if policy == "unknown":
            out += self.errors
        return out

    def exit_code(self, policy):
        return 1 if self.failing(policy) else 0

    def summary(self):
        c = self.counts()
        return {
            "files_scanned": self.files_scanned,
            "files_skipped": self.files_skipped,
            "sites": len(self.sites),
            GUARDED: c[GUARDED],
            UNGUARDED: c[UNGUARDED],
            UNKNOWN: c[UNKNOWN],
            "unguarded_covered": self.unguarded_covered(),
            "elapsed_s": round(self.elapsed, 3),
        }

    def summary_line(self):
        s = self.summary()
        return (
            f"npu-compat scan: {s['files_scanned']} files scanned, "
            f"{s['files_skipped']} skipped (parse errors), {s['sites']} torch.compile sites: "
            f"{s[GUARDED]} guarded, {s[UNGUARDED]} unguarded, {s[UNKNOWN]} unknown; "
            f"{s['unguarded_covered']} of {s[UNGUARDED]} unguarded covered by npu_compat patches; "
            f"{self.elapsed:.2f} s"
        )

    def to_dict(self):
        return {
            "summary": self.summary(),
            "roots": list(self.roots),
            "sites": [s.as_dict() for s in self.sites],
            "errors": list(self.errors),
            "registry_error": self.registry_error,
        }

    def format_table(self):
        lines = [self.summary_line()]
        if not self.sites:
            lines.append("no torch.compile sites found")
        head = ("line", "target", "verdict", "covered by", "reason")
        rows_by_file = {}
        for s in self.sites:
            rows_by_file.setdefault((s.path, s.module), []).append(
                (str(s.line), s.target, s.verdict, s.covered_by or "-", s.reason)
            )
        widths = [len(h) for h in head[:4]]
        for rows in rows_by_file.values():
            for row in rows:
                for i in range(4):
                    widths[i] = max(widths[i], len(row[i]))
        fmt = "  {:>%d}  {:<%d}  {:<%d}  {:<%d}  {}" % tuple(widths)
        for (path, module), rows in rows_by_file.items():
            lines.append("")
            lines.append(f"{path}  [{module}]" if module else path)
            lines.append(fmt.format(*head))
            lines.extend(fmt.format(*row) for row in rows)
        if self.errors:
            lines.append("")
            lines.append("skipped (cannot parse):")
            lines.extend(f"  {e['path']}: {e['error']}" for e in self.errors)
        return "\n".join(lines)


class ScanError(Exception):
    """A path that does not exist or a package that is not installed."""


class _FileScan:
    """Everything about one parsed file: its bindings, then its sites."""

    def __init__(self, tree, source, path, module):
        self.tree = tree
        self.lines = _candidate_lines(source)
        self.path = path
        self.module = module
        self.assigns = {}  # module-level name -> [value expr or None]
        self.defs = {}  # module-level name -> FunctionDef/ClassDef
        self.imports = {}  # module-level name -> (dotted, is_module, original name)
        self.local_imports = {}  # imports inside functions: only for spotting the API
        self.bound_name = {}  # id(call) -> module-level name it is assigned to
        self.handled = set()  # ids of compile calls already reported
        self.sites = []
        self._names_of = {}  # id(site) -> (target, module-level name bound)
        self._truth_memo = {}
        self._route_memo = {}
        self._busy = set()
        self._collect(tree.body)

    # ---- module-level bindings (one pass over module-level statements) ----

    def _collect(self, body):
        stack = list(reversed(body))
        while stack:
            st = stack.pop()
            t = type(st)
            if t is ast.Assign:
                for tgt in st.targets:
                    self._bind(tgt, st.value)
            elif t is ast.AnnAssign:
                if st.value is not None:
                    self._bind(st.target, st.value)
            elif t is ast.AugAssign:
                self._bind(st.target, st.value)
            elif t in (ast.Import, ast.ImportFrom):
                self._record_import(st, self.imports)
            elif t in _DEF_TYPES:
                self.defs[st.name] = st
            elif t in (ast.For, ast.AsyncFor):
                self._bind(st.target, None)
                stack.extend(reversed(st.body + st.orelse))
            elif t in (ast.With, ast.AsyncWith):
                for item in st.items:
                    if item.optional_vars is not None:
                        self._bind(item.optional_vars, None)
                stack.extend(reversed(st.body))
            elif t in (ast.If, ast.While):
                stack.extend(reversed(st.body + st.orelse))
            elif t is ast.Try or type(st).__name__ == "TryStar":
                inner = list(st.body)
                for h in st.handlers:
                    inner += h.body
                stack.extend(reversed(inner + st.orelse + st.finalbody))

    def _bind(self, target, value):
        if isinstance(target, ast.Name):
            self.assigns.setdefault(target.id, []).append(value)
        elif isinstance(target, (ast.Tuple, ast.List)):
            values = value.elts if isinstance(value, (ast.Tuple, ast.List)) else None
            if values is not None and len(values) != len(target.elts):
                values = None
            for i, elt in enumerate(target.elts):
                self._bind(elt, values[i] if values is not None else None)
        elif isinstance(target, ast.Starred):
            self._bind(target.value, None)

    @staticmethod
    def _record_import(node, into):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    into.setdefault(a.asname, (a.name, True, a.name.rsplit(".", 1)[-1]))
                else:
                    top = a.name.split(".", 1)[0]
                    into.setdefault(top, (top, True, top))
        else:
            mod = "." * node.level + (node.module or "")
            for a in node.names:
                if a.name == "*":
                    continue
                into.setdefault(a.asname or a.name, (f"{mod}.{a.name}", False, a.name))

    def _bound(self, name):
        return name in self.assigns or name in self.defs or name in self.imports

    # ---- finding sites (one pass, skipping subtrees with no candidate line) ----

    def _api(self, func):
        """The canonical API name when ``func`` spells a compile entry point."""
        parts = []
        node = func
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return None
        imp = self.imports.get(node.id) or self.local_imports.get(node.id)
        if imp is None:
            return None  # a bare `compile` that torch did not provide is the builtin
        dotted = ".".join([imp[0]] + parts[::-1])
        return dotted if dotted in _APIS else None

    def find_sites(self):
        self._visit(self.tree, (), ())
        return self.sites

    def _visit(self, node, scope, guards):
        t = type(node)
        start = getattr(node, "lineno", None)
        if start is not None:
            # Prune: most of a large file cannot contain a site.
            if t in _DEF_TYPES and node.decorator_list:
                start = min(start, node.decorator_list[0].lineno)
            i = bisect.bisect_left(self.lines, start)
            if i == len(self.lines) or self.lines[i] > (node.end_lineno or start):
                return
        if t in _DEF_TYPES:
            qual = scope + (node.name,)
            for dec in node.decorator_list:
                self._decorator(dec, node, qual, scope, guards)
                self._visit(dec, scope, guards)
            for field in ("args", "returns", "bases", "keywords"):
                sub = getattr(node, field, None)
                if isinstance(sub, list):
                    for s in sub:
                        self._visit(s, scope, guards)
                elif sub is not None:
                    self._visit(sub, scope, guards)
            inner = qual if t is ast.ClassDef else qual + ("<locals>",)
            for st in node.body:
                self._visit(st, inner, guards)
            return
        if t is ast.If or t is ast.IfExp:
            self._visit(node.test, scope, guards)
            body = node.body if t is ast.If else [node.body]
            orelse = node.orelse if t is ast.If else [node.orelse]
            for st in body:
                self._visit(st, scope, guards + ((node.test, True),))
            for st in orelse:
                self._visit(st, scope, guards + ((node.test, False),))
            return
        if t is ast.Call:
            self._call(node, scope, guards)
        elif t is ast.Assign:
            if not scope and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                value = node.value
                self.bound_name[id(value)] = node.targets[0].id
        elif t is ast.Import or t is ast.ImportFrom:
            if scope:
                self._record_import(node, self.local_imports)
        for child in ast.iter_child_nodes(node):
            self._visit(child, scope, guards)

    def _decorator(self, dec, fn, qual, scope, guards):
        if isinstance(dec, ast.Call):
            api = self._api(dec.func)
            if api is None:
                return
            self.handled.add(id(dec))
            call = dec
        else:
            api = self._api(dec)
            if api is None:
                return
            call = None
        bound = fn.name if not scope else None
        self._add(dec, api, "decorator", ".".join(qual), scope, guards, call, bound)

    def _call(self, node, scope, guards):
        if id(node) in self.handled:
            return
        inner = node.func
        # torch.compile(**opts)(fn) / torch._dynamo.optimize("inductor")(fn)
        if isinstance(inner, ast.Call) and id(inner) not in self.handled:
            api = self._api(inner.func)
            if api and (api == "torch._dynamo.optimize" or not _plain_args(inner)):
                self.handled.add(id(inner))
                target = _text(node.args[0]) if node.args else "?"
                self._add(node, api, "call", target, scope, guards, inner, self.bound_name.get(id(node)))
                return
        api = self._api(inner)
        if api is None:
            return
        self.handled.add(id(node))
        if api != "torch._dynamo.optimize" and node.args:
            form, target = "call", _text(node.args[0])  # fn, or *args
        else:
            form, target = "factory", "(returned decorator)"
        self._add(node, api, form, target, scope, guards, node, self.bound_name.get(id(node)))

    def _add(self, node, api, form, target, scope, guards, call, bound):
        kw, star = {}, False
        if call is not None:
            for k in call.keywords:
                if k.arg is None:
                    star = True
                else:
                    kw[k.arg] = k.value
            if api == "torch._dynamo.optimize":
                star = star or any(isinstance(a, ast.Starred) for a in call.args)
        backend = kw.get("backend")
        if backend is None and api == "torch._dynamo.optimize" and call is not None:
            if call.args and not isinstance(call.args[0], ast.Starred):
                backend = call.args[0]
        disable = kw.get("disable")
        try:
            verdict, reason = self._judge(backend, disable, star, guards)
        except RecursionError:
            verdict, reason = UNKNOWN, "expression too deeply nested to evaluate"
        self.sites.append(Site(
            path=self.path, module=self.module, line=node.lineno, col=node.col_offset,
            api=api, form=form, target=target,
            scope=".".join(scope) if scope else "<module>",
            backend=_text(backend) if backend is not None else None,
            disable=_text(disable) if disable is not None else None,
            verdict=verdict, reason=reason, covered_by=None,
        ))
        # A patch replaces a module attribute: the decorated function's name
        # or the name a module-level `x = torch.compile(f)` binds.
        self._names_of[id(self.sites[-1])] = (target, bound)

    def cover(self, patches):
        """Mark sites that a registered patch replaces (module + function)."""
        for site in self.sites:
            target, bound = self._names_of[id(site)]
            names = [p.name for p in patches if p.module == site.module and p.function in (target, bound)]
            site.covered_by = ",".join(names) or None

    # ---- verdicts ----

    def _judge(self, backend, disable, star, guards):
        for test, in_body in reversed(guards):
            kind, _ = self._truth(test)
            if in_body and kind == _F:
                return GUARDED, f"under `if {_text(test)}:` (line {test.lineno}), false on NPU"
            if not in_body and kind == _T:
                return GUARDED, f"in the else-branch of `if {_text(test)}:` (line {test.lineno}), true on NPU"
        d = b = None
        if disable is not None:
            d = self._truth(disable)
            if d[0] == _T:
                return GUARDED, f"disable={_text(disable)} is true on NPU"
        if backend is not None:
            b = self._route(backend)
            if b[0] == _NPU_ROUTE:
                return GUARDED, f"backend={_text(backend)} routes NPU to its own compiler"
        if d is not None and d[0] == _UNK:
            return UNKNOWN, f"disable={_text(disable)}: {d[1]}"
        if b is not None and b[0] == _BUNK:
            return UNKNOWN, f"backend={_text(backend)}: {b[1]}"
        if star:
            return UNKNOWN, "**kwargs may set disable= or backend="
        if d is None:
            parts = ["no disable="]
        elif d[0] == _F:
            parts = [f"disable={_text(disable)} is false on NPU"]
        else:
            parts = [f"disable={_text(disable)} does not depend on an NPU check"]
        parts.append("default backend" if backend is None else f"backend={_text(backend)} on every device")
        return UNGUARDED, "; ".join(parts)

    def _chain(self, node):
        """Identifiers of a dotted name (``torch.npu.is_available``), or None."""
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return None
        parts.append(node.id)
        return parts[::-1]

    def _chain_device(self, chain):
        names = list(chain)
        imp = self.imports.get(chain[0])
        if imp is not None:
            names.append(imp[2])
        devs = [d for d in map(_device_of, names) if d]
        if not devs:
            return None
        return "npu" if "npu" in devs else devs[0]

    def _base_known(self, name):
        return self._bound(name) or hasattr(builtins, name)

    def _through_def(self, kind, name, evaluate, depth):
        """Evaluate a module-level helper's single ``return`` expression, once per
        (kind, name) on the stack so recursive helpers end; None when it has none."""
        ret = _single_return(self.defs[name])
        key = (kind, name)
        if ret is None or key in self._busy:
            return None
        self._busy.add(key)
        try:
            return evaluate(ret, depth + 1)
        finally:
            self._busy.discard(key)

    def _truth(self, node, depth=0):
        """(kind, note): is ``node`` true when this code runs on an NPU machine?"""
        if depth > _MAX_DEPTH:
            return _UNK, "expression too deeply nested"
        t = type(node)
        if t is ast.Constant:
            return (_T if node.value else _F), "constant"
        if t is ast.Name:
            return self._name_truth(node.id, depth)
        if t is ast.Attribute:
            chain = self._chain(node)
            if chain is None:
                sub = self._truth(node.value, depth + 1)
                return sub if sub[0] == _UNK else (_FLAG, "runtime value")
            dev = self._chain_device(chain)
            if dev:
                return _device_truth(dev, f"{dev} check")
            if self._base_known(chain[0]):
                return _FLAG, "runtime value"
            return _UNK, _not_module_level(chain[0])
        if t is ast.Call:
            return self._call_truth(node, depth)
        if t is ast.UnaryOp:
            kind, note = self._truth(node.operand, depth + 1)
            if isinstance(node.op, ast.Not) and kind in (_T, _F):
                return (_F if kind == _T else _T), note
            return kind, note
        if t is ast.BoolOp:
            vals = [self._truth(v, depth + 1) for v in node.values]
            kinds = [k for k, _ in vals]
            decisive = _T if isinstance(node.op, ast.Or) else _F
            if decisive in kinds:
                return vals[kinds.index(decisive)]
            if _UNK in kinds:
                return vals[kinds.index(_UNK)]
            if _FLAG in kinds:
                return vals[kinds.index(_FLAG)]
            return vals[-1]
        if t is ast.Compare:
            dev = self._compared_device(node)
            if dev is not None:
                return dev
        if t is ast.IfExp:
            kind, note = self._truth(node.test, depth + 1)
            if kind == _T:
                return self._truth(node.body, depth + 1)
            if kind == _F:
                return self._truth(node.orelse, depth + 1)
            return _merge([(kind, note), self._truth(node.body, depth + 1), self._truth(node.orelse, depth + 1)])
        if t is ast.NamedExpr:
            return self._truth(node.value, depth + 1)
        # Anything else is a runtime value, unless it leans on a name we cannot resolve.
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                sub = self._truth(child, depth + 1)
                if sub[0] == _UNK:
                    return sub
        return _FLAG, "runtime value"

    def _compared_device(self, node):
        """``device == "npu"``, ``dev.type != "cuda"``, ``x in ("cuda", "hip")``."""
        if len(node.ops) != 1:
            return None
        op = node.ops[0]
        if not isinstance(op, _EQ_OPS + _NE_OPS):
            return None
        strings = []
        for side in (node.left, node.comparators[0]):
            elts = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
            for e in elts:
                if isinstance(e, ast.Constant) and isinstance(e.value, str):
                    strings.append(e.value.split(":", 1)[0].lower())
        devs = [s for s in strings if s == "npu" or s in _OTHER_DEVICES]
        if not devs:
            return None
        hit = "npu" in devs
        if isinstance(op, _NE_OPS):
            hit = not hit
        return (_T if hit else _F), "device comparison"

    def _call_truth(self, node, depth):
        chain = self._chain(node.func)
        if chain is None:
            sub = self._truth(node.func, depth + 1)
            return sub if sub[0] == _UNK else (_FLAG, "runtime value")
        dev = self._chain_device(chain)
        if dev:
            return _device_truth(dev, f"{dev} check")
        name = chain[0]
        if len(chain) == 1:
            fn = self.defs.get(name)
            if fn is not None:
                found = self._through_def("def", name, self._truth, depth)
                return found if found is not None else (_FLAG, f"result of {name}()")
            if not self._bound(name) and name in ("bool", "hasattr", "getattr"):
                for a in node.args:
                    if isinstance(a, ast.Constant) and isinstance(a.value, str) and _device_of(a.value):
                        return _device_truth(_device_of(a.value), "device attribute check")
                if name == "bool" and node.args:
                    return self._truth(node.args[0], depth + 1)
        elif chain[-1] == "startswith" and node.args:
            a = node.args[0]
            if isinstance(a, ast.Constant) and isinstance(a.value, str):
                dev = a.value.lower()
                if dev == "npu" or dev in _OTHER_DEVICES:
                    return _device_truth(dev, "device comparison")
        if self._base_known(name):
            return _FLAG, f"result of {'.'.join(chain)}()"
        return _UNK, _not_module_level(name)

    def _name_truth(self, name, depth):
        memo = self._truth_memo.get(name)
        if memo is not None:
            return memo
        if name in self._busy:
            return _UNK, f"{name!r} is defined in terms of itself"
        self._busy.add(name)
        try:
            dev = _device_of(name)
            if name in self.assigns:
                vals = [
                    self._truth(v, depth + 1) if v is not None else (_UNK, f"{name!r} is bound by unpacking or a loop")
                    for v in self.assigns[name]
                ]
                kinds = {k for k, _ in vals}
                if len(kinds) > 1 and dev and _UNK not in kinds:
                    # try: import torch_npu; _is_npu = True / except: _is_npu = False
                    result = _device_truth(dev, f"{name} ({dev} check by name)")
                else:
                    result = _merge(vals)
            elif name in self.imports:
                mod, is_module, orig = self.imports[name]
                dev = dev or _device_of(orig)
                if dev:
                    result = _device_truth(dev, f"{dev} check")
                elif is_module:
                    result = _FLAG, "module object"
                else:
                    src = mod.rsplit(".", 1)[0]
                    result = _UNK, f"{name!r} is imported from {src}; values are not followed across modules"
            elif dev:
                result = _device_truth(dev, f"{name} ({dev} check by name)")
            elif name in self.defs or hasattr(builtins, name):
                result = _FLAG, "runtime value"
            else:
                result = _UNK, _not_module_level(name)
        finally:
            self._busy.discard(name)
        self._truth_memo[name] = result
        return result

    def _route(self, node, depth=0):
        """(kind, note): does ``backend=node`` send NPU to its own compiler?"""
        if depth > _MAX_DEPTH:
            return _BUNK, "expression too deeply nested"
        t = type(node)
        if t is ast.Constant:
            if isinstance(node.value, str) and _device_of(node.value) == "npu":
                return _NPU_ROUTE, "NPU backend"
            return _SAME, "constant"
        if t is ast.Name:
            return self._name_route(node.id, depth)
        if t is ast.Call or t is ast.Attribute:
            chain = self._chain(node.func if t is ast.Call else node)
            if chain is not None:
                if chain[-1] == "get_compiler_backend" or self._chain_device(chain) == "npu":
                    return _NPU_ROUTE, "NPU-aware backend"
                if t is ast.Call and len(chain) == 1 and chain[0] in self.defs:
                    found = self._through_def("route", chain[0], self._route, depth)
                    if found is not None:
                        return found
            return _BUNK, f"{_text(node)} is computed at run time"
        if t is ast.IfExp:
            kind, note = self._truth(node.test, depth + 1)
            if kind == _T:
                return self._route(node.body, depth + 1)
            if kind == _F:
                return self._route(node.orelse, depth + 1)
            a, b = self._route(node.body, depth + 1), self._route(node.orelse, depth + 1)
            if a[0] == b[0]:
                return a
            return _BUNK, f"depends on {_text(node.test)} ({note})"
        return _BUNK, f"cannot evaluate {_text(node)}"

    def _name_route(self, name, depth):
        memo = self._route_memo.get(name)
        if memo is not None:
            return memo
        if ("r", name) in self._busy:
            return _BUNK, f"{name!r} is defined in terms of itself"
        self._busy.add(("r", name))
        try:
            if name in self.assigns:
                vals = [
                    self._route(v, depth + 1) if v is not None else (_BUNK, f"{name!r} is bound by unpacking or a loop")
                    for v in self.assigns[name]
                ]
                kinds = {k for k, _ in vals}
                result = vals[0] if len(kinds) == 1 else (_BUNK, f"{name!r} is assigned different backends")
            elif name in self.imports:
                mod, _, orig = self.imports[name]
                if _device_of(name) == "npu" or _device_of(orig) == "npu" or orig == "get_compiler_backend":
                    result = _NPU_ROUTE, "NPU backend"
                else:
                    src = mod.rsplit(".", 1)[0]
                    result = _BUNK, f"{name!r} is imported from {src}; values are not followed across modules"
            elif _device_of(name) == "npu":
                result = _NPU_ROUTE, "NPU backend by name"
            elif name in self.defs:
                result = _SAME, f"custom backend {name}"
            else:
                result = _BUNK, _not_module_level(name)
        finally:
            self._busy.discard(("r", name))
        self._route_memo[name] = result
        return result


def _candidate_lines(source):
    """Sorted line numbers that mention a compile API word, an import or an alias."""
    if "\r" in source:  # the parser counts a lone CR as a line break too
        source = source.replace("\r\n", "\n").replace("\r", "\n")
    patterns = list(_CANDIDATE_WORDS)
    for rx in _ALIASES:
        patterns += [re.compile(r"\b%s\b" % re.escape(a)) for a in set(rx.findall(source))]
    offsets = sorted(m.start() for rx in patterns for m in rx.finditer(source))
    out, pos, line = [], 0, 1
    for off in offsets:
        line += source.count("\n", pos, off)
        pos = off
        if not out or out[-1] != line:
            out.append(line)
    return out


def _not_module_level(name):
    return f"{name!r} is not bound at module level (a parameter or local?); names are resolved within the module only"


def _plain_args(call):
    """True when the call has a non-starred first positional argument."""
    return bool(call.args) and not isinstance(call.args[0], ast.Starred)


def _single_return(fn):
    """The expression of a ``def f(): return EXPR`` (docstring allowed), else None."""
    if isinstance(fn, ast.ClassDef):
        return None
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    if len(body) == 1 and isinstance(body[0], ast.Return) and body[0].value is not None:
        return body[0].value
    return None


def _merge(vals):
    kinds = [k for k, _ in vals]
    if len(set(kinds)) == 1:
        return vals[0]
    if _UNK in kinds:
        return vals[kinds.index(_UNK)]
    return _FLAG, "differs between assignments or branches"


# ---- files, roots and module names ----

def _top_root(directory):
    """Parent of the outermost package containing ``directory`` (or itself)."""
    d = os.path.abspath(directory)
    while os.path.isfile(os.path.join(d, "__init__.py")):
        parent = os.path.dirname(d)
        if parent == d:
            break
        d = parent
    return d


def _module_name(path, root):
    rel = os.path.relpath(path, root)
    if rel.startswith(".."):
        return None
    stem = rel[:-3] if rel.endswith(".py") else rel
    parts = [p for p in stem.split(os.sep) if p]
    if parts and parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts) or None


def _walk(top, errors):
    def onerror(exc):
        errors.append({"path": getattr(exc, "filename", top) or top, "error": f"{type(exc).__name__}: {exc.strerror}"})

    for dirpath, dirnames, filenames in os.walk(top, onerror=onerror):
        # __pycache__ holds no sources; hidden dirs are VCS data or virtual environments.
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
        for f in sorted(filenames):
            if f.endswith(".py"):
                yield os.path.join(dirpath, f)


def _package_locations(name):
    """Directories (or a file) of an installed package, found without importing it."""
    parts = name.split(".")
    if not name or not all(p.isidentifier() for p in parts):
        raise ScanError(f"invalid package name: {name!r}")
    try:
        spec = PathFinder.find_spec(parts[0])
    except Exception as exc:  # odd sys.path entries: report, do not crash
        raise ScanError(f"cannot look up package {name!r}: {exc}") from None
    if spec is None:
        raise ScanError(
            f"package {name!r} is not installed (not found on sys.path; pass its source directory as PATH)"
        )
    if spec.submodule_search_locations:
        locs = [os.path.abspath(p) for p in spec.submodule_search_locations]
    elif spec.origin and os.path.isfile(spec.origin):
        locs = [os.path.abspath(spec.origin)]
    else:
        raise ScanError(f"package {name!r} has no source files on disk")
    out = []
    for loc in locs:
        root = os.path.dirname(loc)
        cur = loc
        for part in parts[1:]:
            if os.path.isdir(os.path.join(cur, part)):
                cur = os.path.join(cur, part)
            elif os.path.isfile(os.path.join(cur, part + ".py")):
                cur = os.path.join(cur, part + ".py")
            else:
                cur = None
                break
        if cur is not None:
            out.append((cur, root))
    if not out:
        raise ScanError(f"package {name!r} is not installed (no module {name!r} under {', '.join(locs)})")
    return out


def _read(path):
    with open(path, "rb") as f:
        data = f.read()
    encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    return data.decode(encoding)


def _load_patches():
    try:
        from npu_compat.registry import all_patches

        return tuple(all_patches()), None
    except Exception as exc:  # the audit is still useful without coverage
        return (), f"{type(exc).__name__}: {exc}"


def scan(paths=(), *, packages=(), patches=None):
    """Scan files/directories and installed packages; return a :class:`Report`.

    ``paths``: a path or an iterable of paths (files or directories).
    ``packages``: installed package names, located with PathFinder (never imported).
    ``patches``: patch records for coverage; default: npu_compat's registry.
    Raises :class:`ScanError` for a missing path or package.
    """
    start = time.perf_counter()
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if isinstance(packages, str):
        packages = [packages]
    report = Report()
    if patches is None:
        patches, report.registry_error = _load_patches()
    # (file, root, display path) for every file, in a stable order.
    jobs = []
    for p in paths:
        p = os.fspath(p)
        if not os.path.exists(p):
            raise ScanError(f"no such file or directory: {p}")
        if os.path.isdir(p):
            top = os.path.abspath(p)
            root = _top_root(top)
            report.roots.append(root)
            for f in _walk(top, report.errors):
                jobs.append((f, root, os.path.join(p, os.path.relpath(f, top))))
        else:
            root = _top_root(os.path.dirname(os.path.abspath(p)))
            report.roots.append(root)
            jobs.append((os.path.abspath(p), root, p))
    for name in packages:
        for loc, root in _package_locations(name):
            report.roots.append(root)
            files = _walk(loc, report.errors) if os.path.isdir(loc) else [loc]
            for f in files:
                jobs.append((f, root, os.path.relpath(f, root)))
    seen = set()
    # AST nodes form no cycles, so reference counting frees every tree; the
    # cyclic collector would only re-walk millions of fresh nodes (~20% of the time).
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        _scan_jobs(jobs, seen, patches, report)
    finally:
        if gc_was_enabled:
            gc.enable()
    report.elapsed = time.perf_counter() - start
    return report


def _scan_jobs(jobs, seen, patches, report):
    with warnings.catch_warnings():
        # Invalid escape sequences etc. in scanned code are not our findings.
        warnings.simplefilter("ignore")
        for f, root, shown in jobs:
            key = os.path.realpath(f)
            if key in seen:
                continue
            seen.add(key)
            _scan_file(f, root, shown, patches, report)


def _scan_file(path, root, shown, patches, report):
    # Every spelling needs one of these words in the file (in the call or its
    # import); other files only need a syntax check, and a bytecode compile
    # is about twice as fast as building a Python-level AST.
    try:
        source = _read(path)
        if "compile" not in source and "optimize" not in source:
            compile(source, shown, "exec", dont_inherit=True)
            tree = None
        else:
            tree = ast.parse(source, filename=shown)
    except SyntaxError as exc:
        where = f" (line {exc.lineno})" if exc.lineno else ""
        report.errors.append({"path": shown, "error": f"SyntaxError: {exc.msg}{where}"})
        return
    except (UnicodeDecodeError, LookupError, ValueError, OSError, RecursionError, MemoryError) as exc:
        report.errors.append({"path": shown, "error": f"{type(exc).__name__}: {exc}"})
        return
    report.files_scanned += 1
    if tree is None:
        return
    try:
        fs = _FileScan(tree, source, shown.replace(os.sep, "/"), _module_name(path, root))
        fs.find_sites()
        fs.cover(patches)
    except RecursionError:
        report.files_scanned -= 1
        report.errors.append({"path": shown, "error": "RecursionError: nesting too deep to analyse"})
        return
    report.sites.extend(fs.sites)


# ---- command line ----

_EPILOG = """\
verdicts:
  guarded    NPU never reaches the default compiler (disable= true on NPU,
             backend= routing NPU to its own compiler, or an enclosing `if`
             that excludes NPU)
  unguarded  compiled with an ordinary backend on NPU too
  unknown    cannot tell statically (unresolvable name, **kwargs); see reason

exit status:
  0  nothing fails the --fail-on policy (always, with the default 'never')
  1  --fail-on unguarded: some unguarded site is not covered by a registered
     npu_compat patch (covered sites are fixed at run time);
     --fail-on unknown: the same, or some unknown site not covered, or a file
     that could not be parsed
  2  bad usage, a missing PATH, or a package that is not installed
"""


def _parser():
    from npu_compat.cli import OneLineParser

    p = OneLineParser(
        prog="npu-compat scan",
        description=(
            "Statically list every torch.compile site (files are parsed, never imported)\n"
            "and say whether it is guarded for Ascend NPU.  Default: --package sglang."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help="files or directories to scan (recursing into *.py)")
    p.add_argument(
        "--package", action="append", metavar="NAME",
        help="scan an installed package, located on sys.path without importing it (repeatable)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object (summary, sites, errors)")
    p.add_argument(
        "--fail-on", choices=FAIL_POLICIES, default="never",
        help="exit 1 when uncovered sites of this kind exist (see exit status); default: never",
    )
    return p


def main(argv=None):
    """Entry point of ``npu-compat scan``; returns the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help or a usage error; argparse already printed
        return exc.code if isinstance(exc.code, int) else 2
    packages = args.package if args.package else ([] if args.paths else ["sglang"])
    try:
        report = scan(args.paths, packages=packages)
    except ScanError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if report.registry_error:
        print(f"{parser.prog}: warning: patch registry unavailable ({report.registry_error})", file=sys.stderr)
    out = json.dumps(report.to_dict(), indent=2) if args.json else report.format_table()
    try:
        print(out)
        sys.stdout.flush()
    except BrokenPipeError:
        # `npu-compat scan | head`: the reader left; do not let the exit flush raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return report.exit_code(args.fail_on)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
