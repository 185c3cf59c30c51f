"""``npu-compat scan --patch PATH``: upstream's own remedy as a unified diff.

For each selected site of the sglang tree at PATH (the registry's default
guards, ``--site module:qualname``, or the sites an audit saw fall back or a
user's setting make eager), the diff does what sglang's NPU pull requests
do: ``disable=_is_npu`` on the decorator or ``torch.compile(...)`` call
(``disable=X`` becomes ``disable=X or _is_npu``), and where the module has
no ``_is_npu`` yet, ``is_npu`` in its ``from sglang.srt.utils import`` and
``_is_npu = is_npu()`` beside its other device flags.  The sites are found
by the scanner (:mod:`.engine`); the edits are made on the source bytes at
the AST's line/column positions, so the rest of each file stays
byte-identical.  A site that no longer matches is left out with one line
on stderr.  The reference is docs/audit.md.
"""

import ast
import difflib
import os
import sys

from npu_compat._cli_util import one_line

from .files import ScanError
from .verdicts import GUARDED

FLAG = "_is_npu"
CHECK = "is_npu"
UTILS = "sglang.srt.utils"
LINE_LENGTH = 88  # black's default, which sglang's pre-commit runs
SIBLINGS = "sglang PRs #16115, #18553, #26403, #26573 (the same remedy at sibling sites)"
SIBLINGS_URL = "https://github.com/sgl-project/sglang/pull/26573"


class Want:
    """A site to patch: ``qualname`` in ``module``, with what to say about it."""

    __slots__ = ("module", "qualname", "scope", "origin", "why", "evidence", "upstream", "upstream_url")

    def __init__(self, module, qualname, scope="auto", origin="", why="", evidence="", upstream=SIBLINGS,
                 upstream_url=SIBLINGS_URL):  # fmt: skip
        self.module, self.qualname, self.scope, self.origin = module, qualname, scope, origin
        self.why, self.evidence, self.upstream, self.upstream_url = why, evidence, upstream, upstream_url

    @property
    def name(self):
        return f"{self.module}:{self.qualname}"


def parse_site(text):
    """``module:qualname`` -> Want; ValueError when it is not one."""
    mod, sep, qual = text.strip().partition(":")
    if not sep or not all(p.isidentifier() for p in mod.split(".")) or not all(p.isidentifier() for p in qual.split(".")):
        raise ValueError(f"--site {text!r}: use module:qualname (sglang.srt.models.llama4:Llama4Attention._mul_attn_scale)")
    return Want(mod, qual, origin="--site")


def registry_wants(records):
    """The registry's default guards."""
    return [
        Want(r.module, r.qualname, r.scope, origin=f"record {r.name}", why=r.why,
             evidence=f"{r.evidence}; sglang {r.versions}", upstream=r.upstream, upstream_url=r.upstream_url)
        for r in records if r.kind == "guard" and r.default
    ]  # fmt: skip


def audit_wants(paths, warn):
    """Sites that fell back, that NPU_COMPAT_SPEED measured slower compiled, or that a user's
    NPU_COMPAT_EAGER made eager, in NPU_COMPAT_REPORT files."""
    from npu_compat.auditview import Merge

    m = Merge()
    for p in paths:
        m.read(p)
    for line in m.bad[:5]:
        warn(f"--from-audit: skipped {line}")
    out = {}
    for s in m.sorted_sites():
        fb, setting, slower = s.eager_by["fallback"], s.eager_by["setting"], s.slower()
        if not (fb or setting or slower) or ":" not in s.site:
            continue
        mod, _, qual = s.site.partition(":")
        want = out.get(s.site) or Want(mod, qual, origin="audit")
        parts = [want.why] if want.why else []
        if fb:
            errs = sorted(s.errors.items(), key=lambda kv: -kv[1])
            if errs:
                (stage, typ, msg), n = errs[0]
                parts.append(f"fails on NPU at {stage}: {typ}: {msg} ({n} of {m.processes} processes of the audit)")
            else:
                parts.append(f"fell back on NPU in {fb} of {m.processes} processes of the audit")
        if setting:
            parts.append(f"made eager by the user's NPU_COMPAT_EAGER in {setting} of {m.processes} processes")
        if slower:
            sp = s.speed()
            parts.append(
                f"slower compiled than eager on NPU: {sp['compiled_us']:.1f} us against {sp['eager_us']:.1f} us per call "
                f"({sp['ratio']:.2f}x; median of {sp['processes']} processes measured by npu-compat's NPU_COMPAT_SPEED, "
                f"alternating compiled and eager calls)"
            )
        want.why = "; ".join(parts)
        want.evidence = f"compiled at {s.where} (backend {s.backend})"
        out[s.site] = want
    return list(out.values())


# ---- finding the sites of each want ------------------------------------------------------------


def package_dir(path):
    """The ``sglang`` package directory of a checkout, an installed tree or the package itself."""
    for cand in (os.path.join(path, "python", "sglang"), os.path.join(path, "sglang"), path):
        if os.path.isfile(os.path.join(cand, "__init__.py")) and os.path.basename(os.path.abspath(cand)) == "sglang":
            return cand
    raise ScanError(f"no sglang package at {path} (give an sglang checkout, the directory holding sglang/, or sglang/)")


def _enclosing(scope):
    return scope[: -len(".<locals>")] if scope and scope.endswith(".<locals>") else None


def _bound(site):
    """Names a module-level site is assigned to (``plain = torch.compile(fn)``), and its target's text."""
    names = {site.target}
    try:
        with open(site.path, "rb") as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError):
        return names
    for n in tree.body:
        if isinstance(n, ast.Assign) and (n.value.lineno, n.value.col_offset) == (site.line, site.col):
            names.update(t.id for t in n.targets if isinstance(t, ast.Name))
    return names


def match(report, want):
    """(sites, why not): the report's sites ``want`` names."""
    mine = [s for s in report.sites if s.module == want.module]
    if not mine:
        return [], f"module {want.module} is not in this tree (or holds no compile site)"
    direct = [s for s in mine if s.form == "decorator" and s.target == want.qualname]
    direct += [s for s in mine if s.form != "decorator" and s.scope == "<module>" and want.qualname in _bound(s)]
    # the compile calls made in the function's body (or directly in a class body)
    calls = [s for s in mine if _enclosing(s.scope) == want.qualname or (s.scope == want.qualname and s.form == "decorator")]
    if want.scope == "site":
        found = direct
    elif want.scope == "calls":
        found = calls
    else:
        found = direct or calls
    if not found:
        return [], f"no torch.compile site {want.qualname} in {want.module} (moved or renamed?)"
    return found, None


# ---- editing one file ---------------------------------------------------------------------------


class Source:
    """One file's bytes, its tree and pending edits (byte offsets)."""

    def __init__(self, path):
        with open(path, "rb") as f:
            self.data = f.read()
        self.tree = ast.parse(self.data, filename=path)
        self.starts = [0]
        for i, b in enumerate(self.data):
            if b == 10:
                self.starts.append(i + 1)
        self.edits = []  # (start, end, bytes)
        self.prelude_done = False
        self.flag_line = 0  # where _is_npu is defined (or inserted after), once prelude_done

    def offset(self, line, col):
        return self.starts[line - 1] + col

    def line_start(self, line):
        return self.starts[line] if line < len(self.starts) else len(self.data)

    def line_text(self, line):
        return self.data[self.starts[line - 1]: self.line_start(line)]

    def indent_of(self, line):
        text = self.line_text(line)
        return text[: len(text) - len(text.lstrip(b" \t"))]

    def begins_line(self, node):
        return self.line_text(node.lineno)[: node.col_offset].strip() == b""

    def add(self, start, end, text):
        for s, e, _ in self.edits:
            if start < e and s < end or (start == end == s == e):
                raise ValueError("two edits at one place")
        self.edits.append((start, end, text.encode() if isinstance(text, str) else text))

    def result(self):
        out = self.data
        for start, end, text in sorted(self.edits, reverse=True):
            out = out[:start] + text + out[end:]
        return out


def _node_at(tree, line, col, decorator):
    if decorator:
        for n in ast.walk(tree):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                for d in n.decorator_list:
                    if d.lineno == line and d.col_offset == col:
                        return d
        return None
    for n in ast.walk(tree):  # breadth first: the outermost call at the place comes first
        if isinstance(n, ast.Call) and n.lineno == line and n.col_offset == col:
            return n
    return None


_SIMPLE = (ast.Name, ast.Attribute, ast.Call, ast.Subscript, ast.Constant, ast.Compare, ast.UnaryOp, ast.BoolOp)


def edit_site(src, site):
    """Add the remedy at one scanned site; returns why not, or None."""
    if site.form == "value":
        return "torch.compile is passed around as a value there, not called"
    node = _node_at(src.tree, site.line, site.col, site.form == "decorator")
    if node is None:
        return f"no compile call at line {site.line} (the file changed since the scan?)"
    if not isinstance(node, ast.Call):  # a bare @torch.compile
        src.add(*(2 * (src.offset(node.end_lineno, node.end_col_offset),)), f"(disable={FLAG})")
        return None
    call, outer = node, None
    while isinstance(call.func, ast.Call):  # torch.compile(**opts)(fn): the options' call
        call, outer = call.func, call
    if any(k.arg is None for k in call.keywords):
        return "**kwargs there may set disable= already"
    for k in call.keywords:
        if k.arg == "disable":
            v = k.value
            old = src.data[src.offset(v.lineno, v.col_offset): src.offset(v.end_lineno, v.end_col_offset)].decode()
            if old.strip() in (FLAG, f"{CHECK}()"):
                return f"already disable={old}"
            new = old if isinstance(v, _SIMPLE) else f"({old})"
            src.add(src.offset(v.lineno, v.col_offset), src.offset(v.end_lineno, v.end_col_offset),
                    f"{new} or {FLAG}")  # fmt: skip
            return None
    items = list(call.args) + list(call.keywords)
    if not items:
        end = src.offset(call.end_lineno, call.end_col_offset) - 1
        if src.data[end:end + 1] != b")":
            return f"cannot find the closing parenthesis of the call at line {call.lineno}"
        src.add(end, end, f"disable={FLAG}")
        return None
    last = max(items, key=lambda n: (n.end_lineno, n.end_col_offset))
    at = src.offset(last.end_lineno, last.end_col_offset)
    if last.lineno != call.lineno and src.begins_line(last):  # one argument per line
        src.add(at, at, f",\n{src.indent_of(last.lineno).decode()}disable={FLAG}")
    elif _too_long(src, last.end_lineno, f", disable={FLAG}") and b"#" not in src.data[
        src.offset(call.lineno, call.col_offset): src.offset(call.end_lineno, call.end_col_offset)
    ]:  # on one line, or the arguments hugged on one line of their own: black would split them
        _explode(src, call, items, outer)
    else:
        src.add(at, at, f", disable={FLAG}")
    return None


def _explode(src, call, items, outer=None):
    """The options call, one argument a line with a trailing comma, ``disable=_is_npu`` last.

    What black writes when a call does not fit in LINE_LENGTH columns, and
    keeps (the trailing comma is "magic"): upstream's own fix of this kind
    (sglang 0.5.15, ``layers/rotary_embedding/base.py``) reads
    ``torch.compile(`` / ``dynamic=True,`` / ``disable=_is_npu,`` / ``)(apply_rotary_emb)``.
    """
    indent = src.indent_of(call.lineno).decode()
    inner = indent + "    "
    texts = [src.data[src.offset(n.lineno, n.col_offset): src.offset(n.end_lineno, n.end_col_offset)].decode()
             for n in sorted(items, key=lambda n: (n.lineno, n.col_offset))]  # fmt: skip
    body = "".join(f"\n{inner}{t}," for t in texts + [f"disable={FLAG}"])
    # from the opening parenthesis (arguments hugged on a line of their own start below it)
    start = src.data.index(b"(", src.offset(call.func.end_lineno, call.func.end_col_offset)) + 1
    end = src.offset(call.end_lineno, call.end_col_offset) - 1  # the closing parenthesis
    src.add(start, end, body + "\n" + indent)
    if outer is not None and outer.func is call:
        # `)(\n    fn\n)` hugs its closing parenthesis again once the options are split: `)(fn)`
        a, b = src.offset(call.end_lineno, call.end_col_offset), src.offset(outer.end_lineno, outer.end_col_offset)
        text = src.data[a:b].decode()
        inner = text[1:-1].strip()
        if (text.startswith("(") and "\n" in text and inner and "\n" not in inner and "#" not in text
                and not inner.endswith(",") and len(indent) + len(inner) + 3 <= LINE_LENGTH):  # fmt: skip
            src.add(a, b, f"({inner})")


def _top_imports(tree, before):
    return [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)) and n.lineno < before]


def edit_prelude(src, first_site_line):
    """``is_npu`` imported and ``_is_npu = is_npu()`` defined at module level (once per file); why not, or None."""
    if src.prelude_done:
        if src.flag_line >= first_site_line:
            return f"{FLAG} is defined only after the site (line {src.flag_line})"
        return None
    body = src.tree.body
    first_def = next((n.lineno for n in body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))),
                     10**9)  # fmt: skip
    before = min(first_def, first_site_line)
    for n in body:
        targets = n.targets if isinstance(n, ast.Assign) else [n.target] if isinstance(n, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == FLAG for t in targets):
            src.prelude_done, src.flag_line = True, n.lineno
            return edit_prelude(src, first_site_line)
    imports = _top_imports(src.tree, before)
    if not imports:
        return "no module-level import to place is_npu after"
    flags = [
        n for n in body
        if isinstance(n, ast.Assign) and n.lineno < before and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name)
        and n.targets[0].id.startswith("_is_") and isinstance(n.value, ast.Call) and isinstance(n.value.func, ast.Name)
        and n.value.func.id.startswith("is_")
    ]  # fmt: skip
    check_imports = [
        n for n in body if isinstance(n, ast.ImportFrom) and n.lineno < before and any((a.asname or a.name) == CHECK for a in n.names)
    ]  # fmt: skip
    last_import = max(imports, key=lambda n: n.end_lineno)
    flag_line = f"{FLAG} = {CHECK}()\n"
    if flags:
        anchor = max(flags, key=lambda n: n.end_lineno)
    else:
        anchor = last_import
    if check_imports and min(n.end_lineno for n in check_imports) > anchor.end_lineno:
        # is_npu is imported only below the other flags: the flag goes after that import
        anchor = min(check_imports, key=lambda n: n.end_lineno)
    flag_at = src.line_start(anchor.end_lineno)
    flag_text = flag_line if anchor in flags else "\n" + flag_line
    if not check_imports:
        utils = [n for n in imports if isinstance(n, ast.ImportFrom) and n.level == 0 and n.module == UTILS
                 and not any(a.name == "*" for a in n.names) and src.line_start(n.end_lineno) <= flag_at]  # fmt: skip
        if utils:
            _add_name(src, utils[0])
        else:
            # after the last import that precedes the flag, never below it (its first use)
            above = [n for n in imports if src.line_start(n.end_lineno) <= flag_at]
            at = src.line_start(max(above, key=lambda n: n.end_lineno).end_lineno) if above else flag_at
            text = f"from {UTILS} import {CHECK}\n"
            if at == flag_at:
                flag_text, text = text + flag_text, ""
            if text:
                src.add(at, at, text)
    src.add(flag_at, flag_at, flag_text)
    # the line the flag follows: a site on it or above it would run before the flag exists
    src.prelude_done, src.flag_line = True, anchor.end_lineno
    return None


def _too_long(src, line, added):
    """Whether ``added`` put on ``line`` makes it longer than black's LINE_LENGTH columns."""
    return len(src.line_text(line).rstrip(b"\r\n").decode("utf-8", "replace")) + len(added) > LINE_LENGTH


def _add_name(src, node):
    """``is_npu`` into ``from sglang.srt.utils import ...``, in order when the names are sorted.

    An import on one line that would no longer fit in LINE_LENGTH columns is
    written as black writes it: ``from sglang.srt.utils import (``, one name
    a line with a trailing comma, ``)``.
    """
    names = node.names
    keys = [a.name.lower() for a in names]
    pos = len(names)
    if keys == sorted(keys):
        pos = next((i for i, k in enumerate(keys) if k > CHECK), len(names))
    start, end = src.offset(node.lineno, node.col_offset), src.offset(node.end_lineno, node.end_col_offset)
    if node.lineno == node.end_lineno and _too_long(src, node.lineno, f", {CHECK}"):
        rest = src.data[end: src.line_start(node.lineno)]
        if b"#" not in rest and b"(" not in src.data[start:end]:
            texts = [src.data[src.offset(a.lineno, a.col_offset): src.offset(a.end_lineno, a.end_col_offset)].decode()
                     for a in names]  # fmt: skip
            texts.insert(pos, CHECK)
            indent = src.indent_of(node.lineno).decode()
            body = "".join(f"{indent}    {t},\n" for t in texts)
            src.add(start, end, f"from {'.' * node.level}{node.module or ''} import (\n{body}{indent})")
            return
    if pos < len(names):
        a = names[pos]
        at = src.offset(a.lineno, a.col_offset)
        sep = f",\n{src.indent_of(a.lineno).decode()}" if a.lineno != node.lineno and src.begins_line(a) else ", "
        src.add(at, at, CHECK + sep)
    else:
        a = names[-1]
        at = src.offset(a.end_lineno, a.end_col_offset)
        sep = f",\n{src.indent_of(a.lineno).decode()}" if a.lineno != node.lineno and src.begins_line(a) else ", "
        src.add(at, at, sep + CHECK)


# ---- checking the patched module ---------------------------------------------------------------


def _import_time_names(node):
    """Names ``node`` reads when the module is imported: not inside function bodies or lambdas,
    but in decorators, defaults and class bodies (those run at import)."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        a = node.args
        parts = node.decorator_list + a.defaults + [d for d in a.kw_defaults if d is not None]
        parts += [x.annotation for x in a.args + a.kwonlyargs + a.posonlyargs if x.annotation is not None]
        for p in parts:
            yield from _import_time_names(p)
        return
    if isinstance(node, ast.Lambda):
        for p in node.args.defaults:
            yield from _import_time_names(p)
        return
    if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
        yield node
    for child in ast.iter_child_nodes(node):
        yield from _import_time_names(child)


def _bound_names(stmt):
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).partition(".")[0] for a in stmt.names}
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {stmt.name}
    return {n.id for n in ast.walk(stmt) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}


def check_module(data, filename, names=(FLAG, CHECK)):
    """Why the patched module could not be imported, or None.

    It must compile, and each of ``names`` (the ones the patch adds) must be
    bound at module level before the module first reads it when imported
    (a decorator, a class body, a module-level statement): ``_is_npu =
    is_npu()`` above the import of ``is_npu`` is a NameError on every device.
    """
    try:
        tree = ast.parse(data, filename=filename)
        compile(tree, filename, "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as exc:
        return f"the patched module would not compile ({getattr(exc, 'msg', exc)}, line {getattr(exc, 'lineno', '?')})"
    bound, star = set(), [False]

    def walk(stmts):
        for stmt in stmts:
            blocks = [getattr(stmt, f, None) or [] for f in ("body", "orelse", "finalbody")]
            blocks += [h.body for h in getattr(stmt, "handlers", ())]
            if isinstance(stmt, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
                heads = [getattr(stmt, f, None) for f in ("test", "iter", "target")]
                heads += [i.context_expr for i in getattr(stmt, "items", ())]
                for head in filter(None, heads):
                    why = check(head)
                    if why:
                        return why
                for block in blocks:
                    why = walk(block)
                    if why:
                        return why
                bound.update(_bound_names(stmt))
                continue
            why = check(stmt)
            if why:
                return why
            if isinstance(stmt, ast.ImportFrom) and any(a.name == "*" for a in stmt.names):
                star[0] = True
            bound.update(_bound_names(stmt))
        return None

    def check(node):
        for n in [] if star[0] else _import_time_names(node):
            if n.id in names and n.id not in bound:
                return f"the patched module would read {n.id} at line {n.lineno} before defining it"
        return None

    why = walk(tree.body)
    if why:
        return why
    star = star[0]
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id in names}
    missing = sorted(used - bound) if not star else []
    if missing:
        return f"the patched module would use {', '.join(missing)} without defining it"
    return None


# ---- the diff -----------------------------------------------------------------------------------


def _lines(data):
    """Lines split at b"\n" only (str.splitlines would also split at form feeds and lone CRs)."""
    parts = data.split(b"\n")
    out = [p + b"\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
    return [p.decode("utf-8", "surrogateescape") for p in out]


def _diff(old, new, rel):
    a, b = _lines(old), _lines(new)
    out = []
    for line in difflib.unified_diff(a, b, f"a/{rel}", f"b/{rel}", n=3):
        out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(out).encode("utf-8", "surrogateescape")


class Result:
    def __init__(self):
        self.files = []  # (rel path, old bytes, new bytes)
        self.patched = []  # (want, [sites], rel path)
        self.left_out = []  # (name, why)

    def diff(self):
        return b"".join(_diff(old, new, rel) for rel, old, new in self.files)

    def diffstat(self):
        lines = []
        for rel, old, new in self.files:
            d = [x for x in _diff(old, new, rel).decode("utf-8", "surrogateescape").splitlines()
                 if x[:1] in "+-" and not x.startswith(("+++", "---"))]  # fmt: skip
            lines.append((rel, sum(x[0] == "+" for x in d), sum(x[0] == "-" for x in d)))
        return lines


def make_patch(path, wants, layout="repo", scan_fn=None):
    """Scan the tree at ``path`` and build the patch for ``wants``; a :class:`Result`."""
    if scan_fn is None:
        from .engine import scan as scan_fn
    pkg = package_dir(path)
    report = scan_fn([pkg])
    res = Result()
    by_file = {}  # abs path -> [(want, site)]
    seen = set()
    for want in wants:
        sites, why = match(report, want)
        if why:
            res.left_out.append((want.name, why))
            continue
        todo = []
        for s in sites:
            if s.verdict == GUARDED:
                res.left_out.append((want.name, f"already guarded at line {s.line}: {s.reason}"))
                continue
            key = (s.path, s.line, s.col)
            if key not in seen:
                seen.add(key)
                todo.append(s)
        if todo:
            by_file.setdefault(os.path.abspath(todo[0].path), []).append((want, todo))
    for abspath, items in sorted(by_file.items()):
        try:
            src = Source(abspath)
        except (OSError, SyntaxError, ValueError) as exc:
            for want, _ in items:
                res.left_out.append((want.name, f"cannot read {abspath}: {type(exc).__name__}: {exc}"))
            continue
        rel_sglang = items[0][1][0].module.replace(".", "/")
        rel_sglang += "/__init__.py" if os.path.basename(abspath) == "__init__.py" else ".py"
        rel = ("python/" if layout == "repo" else "") + rel_sglang
        done = []
        for want, sites in items:
            ok = []
            for s in sites:
                mark, prelude = len(src.edits), (src.prelude_done, src.flag_line)
                try:
                    why = edit_site(src, s) or edit_prelude(src, s.line)
                except ValueError as exc:
                    why = str(exc)
                if why:  # nothing of this site stays in the patch
                    del src.edits[mark:]
                    src.prelude_done, src.flag_line = prelude
                    res.left_out.append((want.name, f"line {s.line}: {why}"))
                else:
                    ok.append(s)
            if ok:
                done.append((want, ok, rel))
        if not done:
            continue
        new = src.result()
        broken = check_module(new, abspath)
        if broken:  # a bug of ours: never hand out a patch that can break an import
            for want, _, _ in done:
                res.left_out.append((want.name, broken))
            continue
        res.files.append((rel, src.data, new))
        res.patched.extend(done)
    return res


# ---- the pull request text ----------------------------------------------------------------------


def pr_text(res):
    out = [
        "[NPU] Run torch.compile sites eagerly on Ascend NPU (disable=_is_npu)",
        "",
        "On Ascend NPU these sites are compiled (with the default backend, or with "
        "`get_compiler_backend()`, which hands NPU to torchair) and fail or fall back there. "
        "This adds `disable=_is_npu`, the remedy sglang already uses at sibling sites; "
        "on other devices nothing changes (`disable=False`).",
        "",
    ]
    for want, sites, rel in res.patched:
        lines = ", ".join(str(s.line) for s in sites)
        out += [f"## `{want.name}` (`{rel}`, line{'s' if len(sites) > 1 else ''} {lines})", ""]
        if want.why:
            out.append(f"- What fails on NPU: {want.why}.")
        if want.evidence:
            out.append(f"- How NPU reaches it: {want.evidence}.")
        upstream = f"[{want.upstream}]({want.upstream_url})" if want.upstream_url else want.upstream
        out.append(f"- Upstream siblings: {upstream}.")
        mod, _, qual = want.name.partition(":")
        out.append("- Test (any machine): `npu-compat scan " + rel + "` reports the site `guarded`.")
        if all(s.form == "decorator" for s in sites):
            obj = f"m.{qual}" if "." not in qual else f"vars(m.{qual.split('.')[0]})['{qual.split('.')[1]}']"
            out.append(
                f"- Test (on Ascend without npu-compat; on CUDA for the opposite): `python -c \"import importlib; "
                f"m = importlib.import_module('{mod}'); f = {obj}; "
                f"print('eager' if not hasattr(f, '_torchdynamo_orig_callable') else 'compiled')\"` "
                "prints `eager` on NPU, `compiled` elsewhere."
            )
        else:
            out.append(
                f"- Test (on Ascend): run a model that reaches `{qual}` with `NPU_COMPAT_REPORT=r.jsonl`, "
                "then `npu-compat audit r.jsonl`: the site is eager by `upstream` in every process."
            )
        if want.origin:
            out.append(f"- Found by: npu-compat ({want.origin}).")
        out.append("")
    if not res.patched:
        out.append("(no site to patch)")
    return "\n".join(out)


# ---- the command --------------------------------------------------------------------------------


def run(args, prog, warn=None):
    """``scan --patch`` from parsed arguments; returns the exit status."""
    if warn is None:
        def warn(message):
            sys.stderr.write(f"{prog}: {one_line(message)}\n")
    wants = []
    try:
        for text in args.site or ():
            wants.append(parse_site(text))
    except ValueError as exc:
        sys.stderr.write(f"{prog}: error: {one_line(exc)}\n")
        return 2
    if args.from_audit:
        found = audit_wants(args.from_audit, warn)
        if not found and not args.site:
            sys.stderr.write(
                f"{prog}: error: nothing to patch: no site fell back, was measured slower compiled or was made "
                "eager by NPU_COMPAT_EAGER in those reports\n"
            )
            return 1
        wants += found
    if not args.site and not args.from_audit:
        from .engine import load_patches

        records, error = load_patches()
        if error:
            sys.stderr.write(f"{prog}: error: patch registry unavailable ({one_line(error)})\n")
            return 2
        wants = registry_wants(records)
    try:
        res = make_patch(args.patch, wants, layout=args.layout)
    except ScanError as exc:
        sys.stderr.write(f"{prog}: error: {one_line(exc)}\n")
        return 2
    if not res.files:
        # `... | git apply` would only say "No valid patches in input": say why here, once, and fail
        if not wants:
            why = "no site selected"
        elif len(res.left_out) == 1:
            why = "left out {}: {}".format(*res.left_out[0])
        else:
            name, first = res.left_out[0]
            why = f"all {len(res.left_out)} sites left out (first: {name}: {first})"
        sys.stderr.write(f"{prog}: error: nothing to patch in {one_line(args.patch)}: {one_line(why)}\n")
        return 1
    for name, why in res.left_out:
        warn(f"left out {name}: {why}")
    try:
        if args.pr_text:
            print(pr_text(res))
        else:
            sys.stdout.flush()
            sys.stdout.buffer.write(res.diff())
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 0
