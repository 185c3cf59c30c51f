"""The patch registry: every runtime fix npu_compat knows, as plain data.

A fix is one record module under ``npu_compat/patches/`` that defines
``PATCHES`` (a tuple of :class:`Patch`) plus the implementation module its
records point to.  Records are read by the hook (to patch), by ``status`` (to
explain) and by the README test (so the documentation cannot drift).

This module is imported by ``import npu_compat`` in every process of an NPU
image, so it uses nothing beyond the interpreter's start-up modules.
"""

# Record modules, relative to ``npu_compat.patches``.  One line per fix.
PATCH_MODULES = ("overlap_utils",)

_FIELDS = (
    "name",  # unique, used by NPU_COMPAT_DISABLE=name,...
    "module",  # dotted name of the upstream module patched
    "function",  # module attribute replaced
    "params",  # expected parameter names of the upstream function, in order
    "impl",  # "package.module:attr" of npu_compat's own implementation
    "compile_kwargs",  # torch.compile arguments upstream uses (disable= is added)
    "why",
    "how",
    "upstream",  # the upstream change that made this fix, e.g. "sglang PR #26403"
    "upstream_url",
    "remove_when",
)


class Patch:
    """One runtime fix: target, expected shape, own implementation, and why."""

    __slots__ = _FIELDS

    def __init__(self, **fields):
        missing = [f for f in _FIELDS if f not in fields]
        unknown = [f for f in fields if f not in _FIELDS]
        if missing or unknown:
            raise ValueError(f"bad patch record: missing {missing}, unknown {unknown}")
        for key, value in fields.items():
            object.__setattr__(self, key, value)
        problem = self.problem()
        if problem:
            raise ValueError(f"bad patch record {fields.get('name')!r}: {problem}")

    def __setattr__(self, key, value):
        raise AttributeError("patch records are read-only")

    def problem(self):
        """Return why this record cannot be used, or '' when it is sound."""
        for f in ("name", "module", "function", "impl", "why", "how", "upstream", "remove_when"):
            if not isinstance(getattr(self, f), str) or not getattr(self, f):
                return f"field {f!r} must be a non-empty string"
        if not self.function.isidentifier():
            return f"function {self.function!r} is not an identifier"
        if not all(p.isidentifier() for p in self.module.split(".")):
            return f"module {self.module!r} is not a dotted name"
        if self.impl.count(":") != 1 or not self.impl.startswith("npu_compat."):
            return f"impl {self.impl!r} must be 'npu_compat.<module>:<attr>'"
        if not isinstance(self.params, tuple) or not all(isinstance(p, str) for p in self.params):
            return "params must be a tuple of parameter names"
        if not isinstance(self.compile_kwargs, dict) or "disable" in self.compile_kwargs:
            return "compile_kwargs must be a dict without 'disable'"
        return ""

    def as_dict(self):
        out = {f: getattr(self, f) for f in _FIELDS}
        out["params"] = list(self.params)
        out["compile_kwargs"] = dict(self.compile_kwargs)
        return out

    def __repr__(self):
        return f"<Patch {self.name} {self.module}.{self.function}>"


_loaded = None
_load_errors = ()


def load(modules=None):
    """Return (patches, errors): every sound record, and a message per bad one.

    A record module that fails to import or holds a bad record is reported,
    never raised: one broken fix must not stop the others.
    """
    global _loaded, _load_errors
    if modules is None and _loaded is not None:
        return _loaded, _load_errors
    patches, errors, seen = [], [], set()
    for mod_name in PATCH_MODULES if modules is None else modules:
        try:
            mod = __import__(f"npu_compat.patches.{mod_name}", fromlist=["PATCHES"])
            records = tuple(mod.PATCHES)
        except Exception as exc:  # a broken record module is data, not a crash
            errors.append(f"patch module {mod_name!r}: {type(exc).__name__}: {exc}")
            continue
        for rec in records:
            if not isinstance(rec, Patch):
                errors.append(f"patch module {mod_name!r}: {rec!r} is not a Patch")
            elif rec.name in seen:
                errors.append(f"patch module {mod_name!r}: duplicate patch name {rec.name!r}")
            else:
                seen.add(rec.name)
                patches.append(rec)
    result = (tuple(patches), tuple(errors))
    if modules is None:
        _loaded, _load_errors = result
    return result


def all_patches():
    """Every sound patch record, in registry order."""
    return load()[0]


def target_modules():
    """The distinct upstream module names the registry patches, in order."""
    out = []
    for p in all_patches():
        if p.module not in out:
            out.append(p.module)
    return tuple(out)


def patch_table():
    """The README's patch table, in Markdown, generated from the registry."""
    rows = [
        "| patch | target | why | how | upstream | remove when |",
        "|---|---|---|---|---|---|",
    ]
    for p in all_patches():
        rows.append(
            f"| `{p.name}` | `{p.module}.{p.function}({', '.join(p.params)})` | {p.why} | {p.how} "
            f"| [{p.upstream}]({p.upstream_url}) | {p.remove_when} |"
        )
    return "\n".join(rows)
