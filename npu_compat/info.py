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


def build(import_targets=False):
    problems = _import_targets() if import_targets and npu_compat.is_active() else {}
    npu, why = device.detect()
    patches = []
    records = {p.name: p for p in registry.all_patches()}
    for st in core.status():
        entry = st.as_dict()
        if st.module in problems and st.state in (core.PENDING, core.NOT_INSTALLED):
            entry["state"] = core.IMPORT_ERROR
            entry["reason"] = f"importing {st.module} failed: {problems[st.module]}"
        rec = records[st.name]
        entry.update(why=rec.why, how=rec.how, upstream_url=rec.upstream_url, remove_when=rec.remove_when)
        patches.append(entry)
    return {
        "npu_compat": npu_compat.__version__,
        "python": platform.python_version(),
        "executable": sys.executable,
        "versions": {d: _version(d) for d in ("torch", "torch_npu", "sglang", "wrapt")},
        "device": {"npu": npu, "reason": why, "setting": os.environ.get("NPU_COMPAT_DEVICE", "")},
        "active": npu_compat.is_active(),
        "route": npu_compat.route(),
        "routes": list(npu_compat.routes()),
        "origin": os.environ.get(npu_compat.ORIGIN_VAR),
        "children_inherit": _has_bootstrap(os.environ.get("PYTHONPATH")),
        "started_with_bootstrap": _has_bootstrap(npu_compat.PYTHONPATH_AT_START),
        "plugin_registered": _plugin_registered(),
        "bootstrap_dir": npu_compat.BOOTSTRAP_DIR,
        "disabled": npu_compat.disabled_by_env(),
        "strict": os.environ.get("NPU_COMPAT_STRICT", ""),
        "registry_errors": list(registry.load()[1]),
        "patches": patches,
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
    elif rep["active"]:
        origin = f" (from {rep['origin']})" if rep["route"] == "inherited" and rep["origin"] else ""
        lines.append(f"activation: active via {rep['route']}{origin}; routes seen: {', '.join(rep['routes'])}")
    else:
        lines.append("activation: inactive")
    lines.append(
        "environment: this process was started "
        + ("with" if rep["started_with_bootstrap"] else "without")
        + " npu_compat's bootstrap on PYTHONPATH; its Python children "
        + ("will" if rep["children_inherit"] else "will NOT")
        + " activate npu_compat"
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
    return "\n".join(lines)
