"""Which expressions name the compile API: ``torch.compile`` under any import
alias, and names bound to it (``jit = torch.compile``, ``jit = torch.compile
if not _is_npu else identity``, ``partial(torch.compile, dynamic=True)``),
in the module or imported from another module of the scan."""

import ast

from .bindings import LOCAL
from .evaluate import chain_of

# Canonical dotted names that apply the compiler, after alias resolution.
APIS = frozenset({"torch.compile", "torch.compiler.compile", "torch._dynamo.optimize"})


class Alias:
    """A module-level name bound to the compile API."""

    __slots__ = ("name", "api", "bindings", "node", "test", "in_body", "keywords")

    def __init__(self, name, api, bindings, node, test=None, in_body=True, keywords=()):
        self.name = name
        self.api = api
        self.bindings = bindings  # the ModuleBindings where it is bound
        self.node = node  # the API expression in the bound value
        self.test = test  # `API if test else other`: the API only when test is true (in_body) / false
        self.in_body = in_body
        self.keywords = keywords  # functools.partial(API, **keywords)


def api_by_imports(func, imports, local_imports=None):
    """The canonical API ``func`` spells through the file's own imports, else None."""
    chain = chain_of(func)
    if chain is None:
        return None
    imp = (local_imports or {}).get(chain[0]) or imports.get(chain[0])
    if imp is None:
        return None  # a bare `compile` that torch did not provide is the builtin
    dotted = ".".join([imp.target] + chain[1:])
    return dotted if dotted in APIS else None


def alias_of_value(name, value, mb):
    """An :class:`Alias` when ``value`` (bound to ``name`` in ``mb``) is the compile API, else None."""
    api = api_by_imports(value, mb.imports)
    if api:
        return Alias(name, api, mb, value)
    if isinstance(value, ast.IfExp):
        body, orelse = api_by_imports(value.body, mb.imports), api_by_imports(value.orelse, mb.imports)
        if bool(body) != bool(orelse):
            return Alias(name, body or orelse, mb, value.body if body else value.orelse, value.test, bool(body))
    if isinstance(value, ast.Call) and value.args:
        chain = chain_of(value.func)
        if chain and chain[-1] == "partial":
            api = api_by_imports(value.args[0], mb.imports)
            if api and len(value.args) == 1:
                return Alias(name, api, mb, value.args[0], keywords=tuple(value.keywords))
    return None


def module_aliases(mb):
    """{name: Alias} for the names ``mb`` binds (once, at module level) to the compile API."""
    cached = getattr(mb, "_aliases", None)
    if cached is not None:
        return cached
    out = {}
    for name, values in mb.assigns.items():
        if len(values) == 1 and values[0] is not None and name not in mb.rebinds:
            found = alias_of_value(name, values[0], mb)
            if found is not None:
                out[name] = found
    mb._aliases = out
    return out


def resolve_alias(project, mb, name, alias_names):
    """The :class:`Alias` ``name`` refers to in ``mb`` (bound there or imported), else None."""
    own = module_aliases(mb).get(name)
    if own is not None or name in mb.assigns or name in mb.defs:
        return own
    imp = mb.imports.get(name)
    if imp is None and not mb.stars:
        return None
    if imp is not None and imp.orig not in alias_names:
        return None  # cheap exit: no module of the scan binds that name to the API
    if imp is None and name not in alias_names:
        return None
    res = project.resolve(mb.name, name)
    if res.kind == LOCAL:
        return module_aliases(res.bindings).get(res.name)
    return None


def exported_aliases(project, mb, alias_names):
    """Names ``mb`` binds to an alias at module level, its own and imported ones."""
    out = set(module_aliases(mb))
    for name, imp in mb.imports.items():
        if imp.orig in alias_names and resolve_alias(project, mb, name, alias_names) is not None:
            out.add(name)
    return out
