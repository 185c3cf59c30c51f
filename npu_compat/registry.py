"""The registry: every runtime fix npu_compat knows, as plain data.

Two kinds of record, one per upstream torch.compile site:

* :class:`Patch` ("implementation"): npu_compat carries its own eager
  implementation of the function and installs it on NPU (the two
  ``overlap_utils`` helpers of sglang PR #26403).
* :class:`Guard` ("guard"): upstream's remedy ``disable=is_npu()`` applied at
  run time: on NPU the compiled object's own eager function takes its place,
  in the defining module and everywhere a loaded module bound it.

A record module under ``npu_compat/patches/`` defines ``PATCHES`` (a tuple
of records).  Records are read by the hook (to patch), by ``status`` (to
explain), by ``scan`` (coverage) and by the docs test (the table cannot
drift).  Only the interpreter's start-up modules are used here.
"""

# Record modules, relative to ``npu_compat.patches``.  One line per area.
PATCH_MODULES = ("overlap_utils", "guards")

_COMMON = (
    "name",  # unique, lower-case; NPU_COMPAT_DISABLE=name and NPU_COMPAT_EAGER=name use it
    "module",  # dotted name of the upstream module that defines the site
    "why",
    "upstream",  # the upstream change behind the remedy, e.g. "sglang PR #26403"
    "upstream_url",
    "remove_when",
)


class _Record:
    __slots__ = ()
    _FIELDS = _COMMON
    _TEXT = ()
    kind = ""

    def __init__(self, **fields):
        missing = [f for f in self._FIELDS if f not in fields and f not in self._DEFAULTS]
        unknown = [f for f in fields if f not in self._FIELDS]
        if missing or unknown:
            raise ValueError(f"bad {self.kind} record: missing {missing}, unknown {unknown}")
        for key in self._FIELDS:
            object.__setattr__(self, key, fields.get(key, self._DEFAULTS.get(key)))
        problem = self.problem()
        if problem:
            raise ValueError(f"bad {self.kind} record {fields.get('name')!r}: {problem}")

    _DEFAULTS = {}

    def __setattr__(self, key, value):
        raise AttributeError("registry records are read-only")

    def problem(self):
        """Return why this record cannot be used, or '' when it is sound."""
        for f in self._TEXT:
            if not isinstance(getattr(self, f), str) or not getattr(self, f):
                return f"field {f!r} must be a non-empty string"
        if self.name != self.name.lower() and not self.name.startswith("eager:"):
            # NPU_COMPAT_EAGER's own sites ("eager:module:qualname") keep the case of the site
            return f"name {self.name!r} must be lower-case"
        if not all(p.isidentifier() for p in self.module.split(".")):
            return f"module {self.module!r} is not a dotted name"
        if not all(p.isidentifier() for p in self.qualname.split(".")) or self.qualname.count(".") > 1:
            return f"qualname {self.qualname!r} must be 'function' or 'Class.method'"
        if self.params is not None and (
            not isinstance(self.params, tuple) or not all(isinstance(p, str) for p in self.params)
        ):
            return "params must be a tuple of parameter names"
        return ""

    @property
    def target(self):
        return f"{self.module}.{self.qualname}"

    def as_dict(self):
        out = {"kind": self.kind, "qualname": self.qualname, "default": self.default}
        for f in self._FIELDS:
            value = getattr(self, f)
            out[f] = list(value) if isinstance(value, tuple) else dict(value) if isinstance(value, dict) else value
        return out

    def __repr__(self):
        return f"<{type(self).__name__} {self.name} {self.target}>"


class Patch(_Record):
    """A fix that installs npu_compat's own implementation on NPU."""

    _FIELDS = _COMMON + (
        "function",  # module attribute replaced
        "params",  # expected parameter names of the upstream function, in order
        "impl",  # "npu_compat.impl.<module>:<attr>": npu_compat's own implementation
        "compile_kwargs",  # torch.compile arguments upstream uses (disable= is added)
        "how",
    )
    _TEXT = ("name", "module", "function", "impl", "why", "how", "upstream", "remove_when")
    __slots__ = _FIELDS
    kind = "implementation"
    default = True

    @property
    def qualname(self):
        return self.function

    def problem(self):
        if isinstance(getattr(self, "function", None), str) and not self.function.isidentifier():
            return f"function {self.function!r} is not an identifier"
        problem = super().problem()
        if problem:
            return problem
        if self.params is None:
            return "params must be a tuple of parameter names"
        if self.impl.count(":") != 1 or not self.impl.startswith("npu_compat."):
            return f"impl {self.impl!r} must be 'npu_compat.<module>:<attr>'"
        if not isinstance(self.compile_kwargs, dict) or "disable" in self.compile_kwargs:
            return "compile_kwargs must be a dict without 'disable'"
        return ""


class Guard(_Record):
    """Eager on NPU for one compiled site: its own original function replaces the compiled object."""

    _FIELDS = _COMMON + (
        "qualname",  # "function" or "Class.method", as defined in `module`
        "params",  # expected parameter names of the eager function, or None not to check
        "evidence",  # the call path that reaches the site on NPU
        "versions",  # the sglang releases where the site is compiled on NPU
        "default",  # True: applied on NPU unless disabled; False: only when NPU_COMPAT_EAGER names it
        # "site": qualname is the compiled function; "calls": qualname is a function whose body
        # calls torch.compile at run time (per instance, say): those compilations run eagerly;
        # "auto" (NPU_COMPAT_EAGER's sites): whichever of the two the object turns out to be
        "scope",
    )
    _TEXT = ("name", "module", "qualname", "why", "evidence", "versions", "upstream", "remove_when")
    _DEFAULTS = {"params": None, "upstream_url": "", "default": True, "scope": "site"}
    __slots__ = _FIELDS
    kind = "guard"

    @property
    def function(self):
        return self.qualname

    @property
    def how(self):
        if self.scope == "calls":
            return (
                f"on NPU, torch.compile calls made inside {self.qualname} get disable=True "
                "(npu_compat's torch.compile hook): what they compile runs eagerly"
            )
        return "on NPU the compiled object's own eager function takes its place, as torch.compile(fn, disable=True) gives"

    def problem(self):
        problem = super().problem()
        if problem:
            return problem
        if not isinstance(self.default, bool):
            return "default must be True or False"
        if self.scope not in ("site", "calls", "auto"):
            return "scope must be 'site', 'calls' or 'auto'"
        if self.versions != "any" and release_ranges(self.versions) is None:
            return (
                f"versions {self.versions!r} must be 'any' or releases such as '0.5.13', '0.5.13 to 0.5.23', "
                "comma-separated, with an optional note in parentheses"
            )
        return ""


def release_key(version):
    """(0, 5, 13, 1) for "0.5.13.post1", (0, 5, 13, 0) for "0.5.13"; None for anything else."""
    base, _, post = version.strip().partition(".post")
    parts = base.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts) or (post and not post.isdigit()):
        return None
    return tuple(int(p) for p in parts) + (int(post or 0),)


def release_ranges(versions):
    """A guard's ``versions`` as [(first, last)] release keys; None when it cannot be read.

    ``"0.5.13 to 0.5.23"`` covers every release from 0.5.13 to 0.5.23, post
    releases included; items are comma-separated; a note in parentheses at
    the end is ignored.  ``scripts/check_releases.py`` checks these claims
    against the released wheels.
    """
    text = versions.split("(", 1)[0].strip()
    out = []
    for item in text.split(","):
        first, sep, last = item.strip().partition(" to ")
        lo, hi = release_key(first), release_key(last if sep else first)
        if lo is None or hi is None or lo > hi:
            return None
        out.append((lo, hi[:3] + (10**9,)))  # "to 0.5.14" includes 0.5.14's post releases
    return out


def claims(versions, release):
    """True when a guard's ``versions`` text names ``release`` (e.g. "0.5.13.post1")."""
    key = release_key(release)
    if versions == "any":
        return True
    ranges = release_ranges(versions) or ()
    return key is not None and any(lo <= key <= hi for lo, hi in ranges)


_RECORD_TYPES = (Patch, Guard)
_loaded = None
_load_errors = ()


def load(modules=None):
    """Return (records, errors): every sound record, and a message per bad one.

    A record module that fails to import or holds a bad record is reported,
    never raised: one broken fix must not stop the others.
    """
    global _loaded, _load_errors
    if modules is None and _loaded is not None:
        return _loaded, _load_errors
    records, errors, seen, sites = [], [], set(), set()
    for mod_name in PATCH_MODULES if modules is None else modules:
        try:
            mod = __import__(f"npu_compat.patches.{mod_name}", fromlist=["PATCHES"])
            found = tuple(mod.PATCHES)
        except Exception as exc:  # a broken record module is data, not a crash
            errors.append(f"patch module {mod_name!r}: {type(exc).__name__}: {exc}")
            continue
        for rec in found:
            if not isinstance(rec, _RECORD_TYPES):
                errors.append(f"patch module {mod_name!r}: {rec!r} is not a Patch or Guard")
            elif rec.name in seen:
                errors.append(f"patch module {mod_name!r}: duplicate patch name {rec.name!r}")
            elif rec.target in sites:
                errors.append(f"patch module {mod_name!r}: {rec.target} has two records")
            else:
                seen.add(rec.name)
                sites.add(rec.target)
                records.append(rec)
    result = (tuple(records), tuple(errors))
    if modules is None:
        _loaded, _load_errors = result
    return result


def all_patches():
    """Every sound record (patches and guards), in registry order."""
    return load()[0]


def by_name():
    return {r.name: r for r in all_patches()}


def target_modules():
    """The distinct upstream module names the registry names, in order."""
    out = []
    for p in all_patches():
        if p.module not in out:
            out.append(p.module)
    return tuple(out)


def coverage():
    """{(module, qualname): record} for every record: what ``scan`` calls covered."""
    return {(r.module, r.qualname): r for r in all_patches()}


def _cell(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


def patch_table():
    """The documentation's table of records, in Markdown, generated from the registry."""
    rows = [
        "| record | kind | applies | target | why | how, and the evidence | upstream | remove when |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in all_patches():
        params = f"({', '.join(p.params)})" if p.params is not None else ""
        how = p.how if p.kind == "implementation" else f"{p.how}. Evidence: {p.evidence} ({p.versions})"
        upstream = f"[{p.upstream}]({p.upstream_url})" if p.upstream_url else p.upstream
        applies = "on NPU" if p.default else "on NPU, opt-in: `NPU_COMPAT_EAGER=" + p.name + "`"
        rows.append(
            f"| `{p.name}` | {p.kind} | {applies} | `{p.target}{params}` | {_cell(p.why)} | {_cell(how)} "
            f"| {_cell(upstream)} | {_cell(p.remove_when)} |"
        )
    return "\n".join(rows)
