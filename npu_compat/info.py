"""What ``npu-compat status`` shows: device, versions, activation, patches."""

import os
import platform
import sys

import npu_compat
from npu_compat import core, device, registry


def _version(dist):
    # Read installed metadata; never import the package (torch_npu cannot be
    # imported without CANN, sglang is slow to import).
    from importlib import metadata

    try:
        return metadata.version(dist)
    except Exception:
        return None


def _import_targets():
    """Import each installed target module so its patches are evaluated here."""
    import importlib
    from importlib.machinery import PathFinder

    problems = {}
    for mod in registry.target_modules():
        if mod in sys.modules or PathFinder.find_spec(mod.partition(".")[0]) is None:
            continue
        try:
            importlib.import_module(mod)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            problems[mod] = f"{type(exc).__name__}: {str(exc)[:300]}"
    return problems


def _environment_route(cli):
    """The route that activates a process of this environment.

    The ``npu-compat`` command imports npu_compat itself: that import says
    nothing about the environment, so from the CLI only the routes that ran
    before it count (the bootstrap on PYTHONPATH, an installed hook).
    """
    if not cli:
        return npu_compat.route(), _has_bootstrap(os.environ.get("PYTHONPATH"))
    seen = [r for r in npu_compat.routes() if r != "import"]
    route = next((r for r in ("inherited", "run", "sitecustomize") if r in seen), seen[0] if seen else None)
    return route, _has_bootstrap(npu_compat.PYTHONPATH_AT_START)


def build(import_targets=False, cli=False):
    problems = _import_targets() if import_targets and npu_compat.is_active() else {}
    npu, why = device.detect()
    patches = []
    records = {p.name: p for p in core.records()}
    for st in core.status():
        entry = st.as_dict()
        if st.module in problems and st.state in (core.PENDING, core.NOT_INSTALLED):
            entry["state"] = core.IMPORT_ERROR
            entry["reason"] = f"importing {st.module} failed: {problems[st.module]}"
        rec = records[st.name]
        entry.update(why=rec.why, how=rec.how, upstream_url=rec.upstream_url, remove_when=rec.remove_when)
        if rec.kind == "guard":
            entry.update(evidence=rec.evidence, versions=rec.versions)
        patches.append(entry)
    route, inherit = _environment_route(cli)
    return {
        "npu_compat": npu_compat.__version__,
        "python": platform.python_version(),
        "executable": sys.executable,
        "versions": {d: _version(d) for d in ("torch", "torch_npu", "sglang", "wrapt")},
        "device": {"npu": npu, "reason": why, "setting": os.environ.get("NPU_COMPAT_DEVICE", "")},
        "active": npu_compat.is_active(),
        "route": route,
        "routes": list(npu_compat.routes()),
        "cli": cli,
        "origin": os.environ.get(npu_compat.ORIGIN_VAR) if route == "inherited" or not cli else None,
        "children_inherit": inherit,
        "started_with_bootstrap": _has_bootstrap(npu_compat.PYTHONPATH_AT_START),
        "plugin_registered": _plugin_registered(),
        "bootstrap_dir": npu_compat.BOOTSTRAP_DIR,
        "disabled": npu_compat.disabled_by_env(),
        "strict": os.environ.get("NPU_COMPAT_STRICT", ""),
        "registry_errors": list(registry.load()[1]),
        "patches": patches,
        "eager": os.environ.get("NPU_COMPAT_EAGER", ""),
        "report_file": os.environ.get("NPU_COMPAT_REPORT", ""),
        "compiles": core.compiles(),
        "walk_ms": core._state.walk_ms,
    }


def _has_bootstrap(pythonpath):
    boot = os.path.normcase(npu_compat.BOOTSTRAP_DIR)
    return any(os.path.normcase(os.path.abspath(p)) == boot for p in (pythonpath or "").split(os.pathsep) if p)


def _plugin_registered():
    from importlib import metadata

    try:
        eps = metadata.entry_points(group="sglang.srt.plugins")
    except Exception:
        return False
    return any(ep.value.startswith("npu_compat.") for ep in eps)


def format_text(rep):
    v = rep["versions"]
    lines = [
        f"npu-compat {rep['npu_compat']}  (python {rep['python']}, {rep['executable']})",
        "versions:  " + ", ".join(f"{k} {v[k] or 'not installed'}" for k in ("torch", "torch_npu", "sglang", "wrapt")),
        f"device:    {'NPU' if rep['device']['npu'] else 'not NPU'}: {rep['device']['reason']}",
    ]
    if rep["disabled"]:
        lines.append("activation: disabled by NPU_COMPAT_DISABLE")
    elif rep["cli"]:
        if rep["route"]:
            origin = f" (from {rep['origin']})" if rep["route"] == "inherited" and rep["origin"] else ""
            lines.append(f"activation: this environment activates npu_compat via {rep['route']}{origin}")
        else:
            lines.append(
                "activation: not set up here: a Python process of this shell activates npu_compat only if it "
                "imports it or loads the sglang plugin (this command activated itself to evaluate the patches)"
            )
    elif rep["active"]:
        origin = f" (from {rep['origin']})" if rep["route"] == "inherited" and rep["origin"] else ""
        lines.append(f"activation: active via {rep['route']}{origin}; routes seen: {', '.join(rep['routes'])}")
    else:
        lines.append("activation: inactive")
    lines.append(
        "environment: "
        + ("npu_compat's bootstrap is on PYTHONPATH: Python children " if rep["children_inherit"] else
           "npu_compat's bootstrap is not on PYTHONPATH: Python children do NOT ")
        + ("activate npu_compat" if rep["children_inherit"] else "activate it by themselves")
    )
    lines.append(
        "plugin:    sglang plugin entry point "
        + ("registered: every sglang process activates npu_compat" if rep["plugin_registered"] else "not registered")
    )
    for err in rep["registry_errors"]:
        lines.append(f"registry:  {err}")
    lines.append("patches:")
    for p in rep["patches"]:
        lines.append(f"  {p['name']:<28} {p['state']:<15} {p['module']}.{p['function']}")
        lines.append(f"  {'':<28} {p['reason']}")
        lines.append(f"  {'':<28} now installed: {p['installed']}; upstream: {p['upstream']}")
    if rep["device"]["npu"]:
        lines.append(f"compiles by sglang seen on NPU in this process: {len(rep['compiles'])}")
        for c in rep["compiles"]:
            eager = f"eager ({c['why']})" if c["eager"] else "COMPILED"
            called = {True: "called", False: "not called yet", None: "-"}[c["called"]]
            lines.append(f"  {c['target']}  [{c['backend']}]  {eager}; {called}; at {c['where']}")
    return "\n".join(lines)
