"""Running a scan: collect the files, read each once, parse only those that
can hold a site (plus the modules a name lookup needs), find the sites,
judge them, and mark the ones a registry record covers."""

import ast
import gc
import os
import re
import time
import warnings

from .api import exported_aliases, module_aliases
from .backends import Routes
from .bindings import ModuleBindings, Project
from .evaluate import Truth, text
from .files import ScanError, can_hold_site, mentions, module_name, names_regex, package_locations, read_bytes
from .files import in_tests, is_python_file, top_root, walk
from .judge import judge
from .report import Report, Site, cover
from .sites import SiteFinder

# Lines that can hold (part of) a site: the API words, imports (aliases), and
# names bound to the API.  Subtrees without such a line are not walked.
_LINE_WORDS = (re.compile(rb"compile"), re.compile(rb"optimize"), re.compile(rb"import"))
_COMPILE_AS = re.compile(rb"(?:compile|optimize)\s+as\s+([A-Za-z_]\w*)")


def load_patches():
    """The registry's records, or () and why not (the audit is still useful without coverage)."""
    try:
        from npu_compat.registry import all_patches

        return tuple(all_patches()), None
    except Exception as exc:
        return (), f"{type(exc).__name__}: {exc}"


def scan(paths=(), *, packages=(), patches=None, parse_all=False, skip_tests=False, progress=None):
    """Scan files/directories and installed packages; return a :class:`~.report.Report`.

    ``paths``: a path or an iterable of paths (files or directories).
    ``packages``: installed package names, located with PathFinder (never imported).
    ``patches``: registry records for coverage; default: npu_compat's registry.
    ``parse_all``: parse every file (slower; the same sites and verdicts).
    ``skip_tests``: leave out test/ and benchmark/ directories (files.TEST_DIRS).
    ``progress``: called as ``progress(stage, done, total)`` while reading and parsing.
    Raises :class:`~.files.ScanError` for a missing path or package, and for
    a path with no Python file in it.
    """
    start = time.perf_counter()
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if isinstance(packages, str):
        packages = [packages]
    report = Report()
    if patches is None:
        patches, report.registry_error = load_patches()
    jobs = _jobs(paths, packages, report, skip_tests)
    # AST nodes form no cycles, so reference counting frees every tree; the
    # cyclic collector would only re-walk millions of fresh nodes.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escapes etc. in scanned code are not our findings
            _Run(report, parse_all, progress).run(jobs, patches)
    finally:
        if gc_was_enabled:
            gc.enable()
    report.elapsed = time.perf_counter() - start
    return report


def _jobs(paths, packages, report, skip_tests=False):
    """(file, root, display path) for every file, in a stable order."""
    jobs = []
    for p in paths:
        p = os.fspath(p)
        if not os.path.exists(p):
            raise ScanError(f"no such file or directory: {p}")
        if os.path.isdir(p):
            top = os.path.abspath(p)
            root = top_root(top)
            report.roots.append(root)
            cut = len(top.rstrip(os.sep)) + 1  # walk yields paths below top: slicing is relpath, cheaper
            found = [(f, root, os.path.join(p, f[cut:])) for f in walk(top, report.errors, skip_tests)]
            if not found:
                raise ScanError(f"{p}: no Python file in it (nothing to scan)")
            jobs += found
        else:
            if not is_python_file(p):
                raise ScanError(f"{p}: not a Python file (neither *.py nor a #! python script)")
            root = top_root(os.path.dirname(os.path.abspath(p)))
            report.roots.append(root)
            jobs.append((os.path.abspath(p), root, p))
    for name in packages:
        for loc, root in package_locations(name):
            report.roots.append(root)
            files = walk(loc, report.errors, skip_tests) if os.path.isdir(loc) else [loc]
            cut = len(root.rstrip(os.sep)) + 1
            jobs += [(f, root, f[cut:] if f.startswith(root) else os.path.relpath(f, root)) for f in files]
    return jobs


class _File:
    __slots__ = ("path", "shown", "module", "key", "data", "bindings", "is_package")

    def __init__(self, path, shown, module, key, data):
        self.path, self.shown, self.module, self.key, self.data = path, shown, module, key, data
        self.bindings = None
        self.is_package = os.path.basename(path) == "__init__.py"


class _Run:
    def __init__(self, report, parse_all, progress=None):
        self.report = report
        self.parse_all = parse_all
        self.progress = progress or (lambda stage, done, total: None)
        self.files = {}  # project key -> _File
        self.project = Project(self._lazy)
        self.truth = Truth(self.project)
        self.routes = Routes(self.truth)
        self._names_of = {}  # id(site) -> (target, module-level name bound): what a record may name
        self._second = set()  # keys of files parsed because they use a name bound to the API
        self._failed = 0  # files read that could not be read, parsed or analysed

    def run(self, jobs, patches):
        order = self._read(jobs)
        first = [f for f in order if self.parse_all or can_hold_site(f.data)]
        for i, f in enumerate(first):
            if not i % 16:
                self.progress("parsed", i, len(first))
            self._parse(f)
        self.progress("parsed", len(first), len(first))
        names = self._alias_names(order)
        candidates = {f.key for f in first} | self._second
        for f in order:
            if f.bindings is not None and f.key in candidates:
                self._find(f, names)
        self.report.files_skipped = self.report.files_read - self.report.files_parsed - self._failed
        cover(self.report.sites, patches, lambda s: self._names_of[id(s)])

    def _read(self, jobs):
        seen, order = set(), []
        for i, (path, root, shown) in enumerate(jobs):
            if not i % 64:
                self.progress("read", i, len(jobs))
            try:
                data, identity = read_bytes(path)
            except OSError as exc:
                self.report.files_unreadable += 1
                self.report.errors.append({"path": shown, "error": f"{type(exc).__name__}: {exc.strerror or exc}"})
                continue
            if identity in seen:  # the same file through a link or a second root
                continue
            seen.add(identity)
            self.report.files_read += 1
            module = module_name(path, root)
            key = module if module and module not in self.files else f"<{shown}>"
            f = _File(path, shown, module, key, data)
            self.files[key] = f
            self.project.add(key, path)
            order.append(f)
        self.progress("read", len(jobs), len(jobs))
        return order

    def _parse(self, f):
        """Parse ``f`` and build its bindings (None and an error entry when it does not parse)."""
        if f.bindings is not None or f.data is None:
            return f.bindings
        data, f.data = f.data, None
        self.report.files_parsed += 1
        try:
            tree = ast.parse(data, filename=f.shown)
            f.bindings = ModuleBindings(tree, f.key, f.is_package, data)
        except SyntaxError as exc:
            where = f" (line {exc.lineno})" if exc.lineno else ""
            self._error(f, f"SyntaxError: {exc.msg}{where}")
        except (ValueError, UnicodeDecodeError, LookupError, RecursionError, MemoryError) as exc:
            self._error(f, f"{type(exc).__name__}: {exc}")
        self.project.put(f.key, f.bindings)
        return f.bindings

    def _error(self, f, message):
        self.report.files_parsed -= 1
        self._failed += 1
        self.report.errors.append({"path": f.shown, "error": message})

    def _lazy(self, key):
        f = self.files.get(key)
        return self._parse(f) if f is not None else None

    def _alias_names(self, order):
        """Names bound to the compile API anywhere; parses the files that use them."""
        parsed = [f for f in order if f.bindings is not None]
        names = set()
        for f in parsed:
            names.update(module_aliases(f.bindings))
        while names:
            new = set()
            for f in parsed:
                new |= exported_aliases(self.project, f.bindings, names)
            rx = names_regex(names | new)
            more = [f for f in order if f.bindings is None and f.data is not None and mentions(f.data, rx)]
            for f in more:
                if self._parse(f) is not None:
                    self._second.add(f.key)
                    parsed.append(f)
            if new <= names and not more:
                break
            names |= new
        return names

    def _find(self, f, names):
        mb = f.bindings
        found = []
        try:
            raw = SiteFinder(self.project, mb, _candidate_lines(mb.source, names), names).find()
            for r in raw:
                verdict, reason, backend, disable = judge(self.truth, self.routes, mb, r)
                site = Site(
                    path=f.shown.replace(os.sep, "/"), module=f.module, line=r.node.lineno, col=r.node.col_offset,
                    api=r.api, form=r.form, target=r.target, scope=r.scope,
                    backend=text(backend) if backend is not None else None,
                    disable=text(disable) if disable is not None else None,
                    verdict=verdict, reason=reason, in_tests=in_tests(f.module, f.shown),
                )
                self._names_of[id(site)] = (r.target, r.bound)
                found.append(site)
        except RecursionError:
            self._error(f, "RecursionError: nesting too deep to analyse")
            return
        self.report.sites.extend(found)


def _candidate_lines(source, alias_names):
    """Sorted line numbers that mention a compile API word, an import or an alias."""
    if b"\r" in source:  # the parser counts a lone CR as a line break too
        source = source.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    patterns = list(_LINE_WORDS)
    local = set(m.decode("ascii", "replace") for m in _COMPILE_AS.findall(source)) | set(alias_names)
    if local:
        patterns.append(names_regex(local))
    offsets = sorted(m.start() for rx in patterns for m in rx.finditer(source))
    out, pos, line = [], 0, 1
    for off in offsets:
        line += source.count(b"\n", pos, off)
        pos = off
        if not out or out[-1] != line:
            out.append(line)
    return out
