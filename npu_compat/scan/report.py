"""What a scan found: :class:`Site` (one per compile site) and :class:`Report`
(sites, files read/parsed/skipped, errors, totals, the ``--fail-on`` test).
Rendering lives in :mod:`.render`."""

from .verdicts import NPU_BACKEND, UNGUARDED, VERDICTS, failing_verdicts, fails_on_errors

OPT_IN = "opt-in"
DEFAULT = "default"


class Site:
    """One place where torch.compile (or an alias) is applied."""

    __slots__ = (
        "path", "module", "line", "col", "api", "form", "target", "scope",
        "backend", "disable", "verdict", "reason", "covered_by", "coverage", "in_tests",
    )

    def __init__(self, **kw):
        for key in self.__slots__:
            setattr(self, key, kw.get(key))

    def as_dict(self):
        return {key: getattr(self, key) for key in self.__slots__}

    @classmethod
    def from_dict(cls, data):
        if not isinstance(data, dict):
            raise ValueError("a site is not a JSON object")
        site = cls(**{k: data.get(k) for k in cls.__slots__})
        if site.verdict not in VERDICTS:
            raise ValueError(f"unknown verdict {site.verdict!r}")
        if site.covered_by and not site.coverage:  # reports of the first scanner
            site.coverage = DEFAULT
        site.in_tests = bool(site.in_tests)
        return site

    @property
    def exempt(self):
        """Covered by a patch that applies without opt-in: fixed at run time, never fails --fail-on."""
        return self.coverage == DEFAULT

    @property
    def key(self):
        """Identity across versions: module (or path) and qualified name, never the line."""
        return (self.module or self.path, self.scope, self.target, self.api)

    def __repr__(self):
        return f"<Site {self.path}:{self.line} {self.target} {self.verdict}>"


class Report:
    """Sites, files and errors of one scan."""

    def __init__(self):
        self.sites = []
        self.errors = []  # {"path": ..., "error": ...}, one per file that could not be read or parsed
        self.files_read = 0
        self.files_parsed = 0
        self.files_skipped = 0  # read, and cannot hold a site: not parsed
        self.files_unreadable = 0  # could not be read at all (in errors, not in files_read)
        self.roots = []
        self.elapsed = 0.0
        self.registry_error = None
        self.source = None  # the JSON file a loaded report came from

    @property
    def files_scanned(self):
        """Files read and analysed (parsed, or needing no parse)."""
        return self.files_parsed + self.files_skipped

    def counts(self):
        out = {v: 0 for v in VERDICTS}
        for s in self.sites:
            out[s.verdict] += 1
        return out

    def covered(self, verdict=UNGUARDED, coverage=None):
        """Sites of ``verdict`` a record covers (``coverage``: only DEFAULT or only OPT_IN records)."""
        return sum(1 for s in self.sites if s.verdict == verdict and s.coverage and coverage in (None, s.coverage))

    def in_tests(self):
        """The sites under a test/ or benchmark/ directory (see files.TEST_DIRS)."""
        return [s for s in self.sites if s.in_tests]

    def failing(self, policy, sites=None):
        """Sites (and, for 'unknown', files not read or parsed) that make ``policy`` fail.

        Sites a default patch covers never fail: they are fixed at run time.
        """
        bad = failing_verdicts(policy)
        out = [s for s in (self.sites if sites is None else sites) if s.verdict in bad and not s.exempt]
        if sites is None and fails_on_errors(policy):
            out += self.errors
        return out

    def exit_code(self, policy):
        return 1 if self.failing(policy) else 0

    def summary(self):
        out = {
            "files_scanned": self.files_scanned,
            "files_read": self.files_read,
            "files_parsed": self.files_parsed,
            "files_skipped": self.files_skipped,
            "files_failed": len(self.errors),
            "files_unreadable": self.files_unreadable,
            "sites": len(self.sites),
        }
        out.update(self.counts())
        out["unguarded_covered"] = self.covered(UNGUARDED)
        out["unguarded_covered_default"] = self.covered(UNGUARDED, DEFAULT)
        out["unguarded_covered_opt_in"] = self.covered(UNGUARDED, OPT_IN)
        out["npu_backend_covered"] = self.covered(NPU_BACKEND)
        out["npu_backend_covered_default"] = self.covered(NPU_BACKEND, DEFAULT)
        out["unguarded_eager_backend"] = sum(1 for s in self.sites if s.verdict == UNGUARDED and is_eager_backend(s))
        tests = self.in_tests()
        out["sites_in_tests"] = len(tests)
        out["in_tests"] = {v: sum(1 for s in tests if s.verdict == v) for v in VERDICTS}
        out["elapsed_s"] = round(self.elapsed, 3)
        return out

    def to_dict(self):
        return {
            "summary": self.summary(),
            "roots": list(self.roots),
            "sites": [s.as_dict() for s in self.sites],
            "errors": list(self.errors),
            "registry_error": self.registry_error,
        }

    @classmethod
    def from_dict(cls, data, source=None):
        """A report saved with ``--json`` (ValueError when it is not one)."""
        if not isinstance(data, dict) or not isinstance(data.get("sites"), list):
            raise ValueError('it has no "sites" list')
        rep = cls()
        rep.sites = [Site.from_dict(s) for s in data["sites"]]
        rep.errors = [e for e in data.get("errors") or [] if isinstance(e, dict)]
        summary = data.get("summary") or {}
        for key in ("files_read", "files_parsed", "files_skipped", "files_unreadable"):
            value = summary.get(key)
            setattr(rep, key, value if isinstance(value, int) else 0)
        if not rep.files_read and isinstance(summary.get("files_scanned"), int):
            rep.files_read = rep.files_parsed = summary["files_scanned"]
        rep.roots = list(data.get("roots") or [])
        rep.source = source
        return rep


def is_eager_backend(site):
    """``backend="eager"``: dynamo traces, then runs the captured graph as it is (no code generated)."""
    return site.backend in ('"eager"', "'eager'")


def _enclosing(site):
    """The function a site sits in (``scope`` without ``.<locals>``), or None at module level."""
    scope = site.scope or ""
    return scope[: -len(".<locals>")] if scope.endswith(".<locals>") else None


def cover(sites, records, names_of):
    """Mark the sites a registry record covers: same dotted module, and the
    record's qualname is the site's qualified name or the module-level name
    the compiled object is bound to (``names_of(site)``); a record of scope
    ``calls`` covers the compilations made inside the function it names."""
    index = {}
    for r in records:
        index.setdefault(getattr(r, "module", None), []).append(r)
    for site in sites:
        found = [
            r
            for r in index.get(site.module, ())
            if (getattr(r, "qualname", None) == _enclosing(site))
            if getattr(r, "scope", "site") == "calls"
        ] + [
            r
            for r in index.get(site.module, ())
            if getattr(r, "scope", "site") != "calls" and getattr(r, "qualname", None) in names_of(site)
        ]
        if not found:
            continue
        default = [r for r in found if getattr(r, "default", True)]
        site.coverage = DEFAULT if default else OPT_IN
        site.covered_by = ",".join(r.name if getattr(r, "default", True) else f"{r.name} ({OPT_IN})" for r in found)
