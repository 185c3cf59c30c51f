"""What ``npu-compat status`` shows: device, versions, activation, patches.

``--no-import`` (``build(import_targets=False, cli=True)``) imports neither
torch, torch_npu nor sglang: versions come from installed metadata, the
device from :func:`npu_compat.device.evidence` (installed distributions and
device files).  The full status imports the installed target modules, so
each patch is evaluated for real, and torch only where the device answer
needs it (torch_npu installed, or torch already loaded).
"""

import os
import platform
import sys

import npu_compat
from npu_compat import _cli_util, _log, core, device, registry
from npu_compat import settings as settings_mod

WIDTH = 80
LABEL = 12  # "activation: " and the others line up after it


def _norm_dist(name):
    return name.replace("-", "_").replace(".", "_").lower()


def _dists():
    """{normalized name: metadata directory} of the distributions on sys.path, the first of each name.

    The same answer as importlib.metadata for our questions, at a fraction of
    its cost: importing importlib.metadata loads email, zipfile and pathlib
    (about 0.1 s here), more than the rest of ``status --no-import``.
    """
    found = {}
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for n in sorted(names):
            for suffix in (".dist-info", ".egg-info"):
                if n.endswith(suffix):
                    name = n[: -len(suffix)].partition("-")[0]  # NAME-VERSION.dist-info, NAME.egg-info
                    found.setdefault(_norm_dist(name), os.path.join(entry or ".", n))
    return found


def _meta_version(path):
    for name in ("METADATA", "PKG-INFO"):
        try:
            with open(os.path.join(path, name), encoding="utf-8", errors="replace") as f:
                for line in f:
                    if line.startswith("Version:"):
                        return line[8:].strip()
                    if not line.strip():
                        break  # the headers end here
        except OSError:
            continue
    return None


def _version(dist, dists=None):
    """The installed version of distribution ``dist``, from its metadata; never imports the package
    (torch_npu cannot be imported without CANN, sglang is slow to import)."""
    path = (dists if dists is not None else _dists()).get(_norm_dist(dist))
    return _meta_version(path) if path else None


def _import_targets():
    """Import each installed target module so its patches are evaluated here; {module: problem}."""
    import warnings

    problems = {}
    broken = {}  # top-level package -> why it cannot be imported at all
    with warnings.catch_warnings():
        # sglang's and torch's import-time warnings are about the host, not npu_compat's state
        warnings.simplefilter("ignore")
        for mod in registry.target_modules():
            top = mod.partition(".")[0]
            if top not in broken:
                top_problem = {}
                _import_one(top, top_problem)
                broken[top] = top_problem.get(top)
            if broken[top]:
                # one reason for every record of the package, not a KeyError for each after the first
                problems[mod] = f"{top} cannot be imported: {broken[top]}"
                continue
            _import_one(mod, problems)
            if mod in problems:
                problems[mod] = f"importing {mod} failed: {problems[mod]}"
    return problems


def _import_one(mod, problems):
    import importlib
    from importlib.machinery import PathFinder

    if mod in sys.modules or PathFinder.find_spec(mod.partition(".")[0]) is None:
        return
    try:
        importlib.import_module(mod)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        missing = getattr(exc, "name", None) if isinstance(exc, ModuleNotFoundError) else None
        top = mod.partition(".")[0]
        if missing and missing.partition(".")[0] != top:
            problems[mod] = f"it needs {missing.partition('.')[0]}, which is not installed (ModuleNotFoundError)"
        else:
            problems[mod] = f"{type(exc).__name__}: {str(exc)[:300]}"


def _installed_sitecustomize():
    """The path of npu-compat's installed sitecustomize.py when it is the one this interpreter runs, else None.

    The bootstrap's own file does not count (PYTHONPATH says that): this is
    the install route, which every process of this interpreter takes.
    """
    from importlib.machinery import PathFinder

    try:
        spec = PathFinder.find_spec("sitecustomize")
        path = spec.origin if spec is not None else None
        if not path or not os.path.isfile(path):
            return None
        if os.path.normcase(os.path.dirname(os.path.abspath(path))) == os.path.normcase(npu_compat.BOOTSTRAP_DIR):
            return None
        from npu_compat.sitedir import MARKER

        with open(path, "rb") as f:
            head = f.read(4096)
        return path if MARKER.encode() in head else None
    except Exception:
        return None


def _environment_route(cli, installed):
    """(route, bootstrap on PYTHONPATH) of a process of this environment.

    The ``npu-compat`` command imports npu_compat itself: that import says
    nothing about the environment, so from the CLI only the routes that ran
    before it count (the bootstrap on PYTHONPATH, an installed hook).
    """
    if not cli:
        return npu_compat.route(), _has_bootstrap(os.environ.get("PYTHONPATH"))
    seen = [r for r in npu_compat.routes() if r != "import"]
    route = next((r for r in ("inherited", "run", "sitecustomize") if r in seen), seen[0] if seen else None)
    if route is None and installed is not None:
        route = "sitecustomize"  # NPU_COMPAT_DISABLE kept it from recording itself
    return route, _has_bootstrap(npu_compat.PYTHONPATH_AT_START)


def _device(import_targets):
    """The device answer, and how it was reached: importing torch only where the answer needs it."""
    if import_targets and (sys.modules.get("torch") is not None or device.torch_npu_installed()):
        npu, why = device.detect()
        return npu, why, "torch"
    npu, why = device.evidence()
    return npu, why, ("torch" if sys.modules.get("torch") is not None else "files")


def build(import_targets=False, cli=False):
    settings, setting_warnings = _log.capture_warnings(settings_mod.settings)
    problems = _import_targets() if import_targets and npu_compat.is_active() else {}
    npu, why, by = _device(import_targets or not cli)
    setting = os.environ.get("NPU_COMPAT_DEVICE", "")
    preview = None
    if npu and why.startswith("forced"):
        real, real_why = device.evidence(ignore_setting=True)
        if not real:
            preview = (
                "this machine is not an NPU (" + real_why + "): sglang's own is_npu() is false here, so a "
                "guard of a site sglang leaves eager on NPU reads `applied`, on an NPU `upstream-fixed`"
            )
    patches = []
    records = {p.name: p for p in core.records()}
    for st in core.status():
        entry = st.as_dict()
        if st.module in problems and st.state in (core.PENDING, core.NOT_INSTALLED):
            entry["state"] = core.IMPORT_ERROR
            entry["reason"] = problems[st.module]
        rec = records[st.name]
        entry.update(why=rec.why, how=rec.how, upstream_url=rec.upstream_url, remove_when=rec.remove_when)
        if rec.kind == "guard":
            entry.update(evidence=rec.evidence, versions=rec.versions)
        patches.append(entry)
    installed = _installed_sitecustomize()
    dists = _dists()
    route, boot = _environment_route(cli, installed)
    return {
        "npu_compat": npu_compat.__version__,
        "python": platform.python_version(),
        "executable": sys.executable,
        "versions": {d: _version(d, dists) for d in ("torch", "torch_npu", "sglang", "wrapt")},
        "device": {"npu": npu, "reason": why, "setting": setting, "decided_by": by, "preview": preview},
        # from the command line: whether this environment activates it (as the text says), not whether
        # the command itself did (it always does, to evaluate the patches: active_here)
        "active": (route is not None and not npu_compat.disabled_by_env()) if cli else npu_compat.is_active(),
        "active_here": npu_compat.is_active(),
        "settings": dict(settings),
        "setting_warnings": setting_warnings,
        "route": route,
        "routes": list(npu_compat.routes()),
        "cli": cli,
        "origin": os.environ.get(npu_compat.ORIGIN_VAR) if route == "inherited" or not cli else None,
        "children_inherit": boot or installed is not None,
        "bootstrap_on_pythonpath": boot,
        "installed_sitecustomize": installed,
        "started_with_bootstrap": _has_bootstrap(npu_compat.PYTHONPATH_AT_START),
        "plugin_registered": _plugin_registered(dists),
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


def _plugin_registered(dists=None):
    """Whether an installed distribution declares an ``sglang.srt.plugins`` entry point into npu_compat."""
    for path in (dists if dists is not None else _dists()).values():
        try:
            with open(os.path.join(path, "entry_points.txt"), encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        section = None
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1].strip()
            elif section == "sglang.srt.plugins" and "=" in line:
                if line.partition("=")[2].strip().startswith("npu_compat."):
                    return True
    return False


# ---- text, laid out for 80 columns ----


def _field(label, text):
    """``label: text`` wrapped at WIDTH, continuation lines under the text."""
    return _cli_util.wrap(text, WIDTH, first=f"{label + ':':<{LABEL}}", indent=" " * LABEL)


def _activation(rep):
    if rep["disabled"]:
        return "off: NPU_COMPAT_DISABLE turns npu_compat off in every process that sees it"
    origin = f" (from {rep['origin']})" if rep["route"] == "inherited" and rep["origin"] else ""
    if rep["cli"]:
        if rep["route"]:
            return f"this environment activates npu_compat via {rep['route']}{origin}"
        return (
            "not set up here: only a process that imports npu_compat or loads the sglang plugin activates it "
            "(this command activated itself)"
        )
    if rep["active"]:
        return f"active via {rep['route']}{origin}; routes seen: {', '.join(rep['routes'])}"
    return "inactive"


def _children(rep):
    off = "; NPU_COMPAT_DISABLE turns it off in them too" if rep["disabled"] else ""
    if rep["bootstrap_on_pythonpath"]:
        return f"Python children activate npu_compat (its bootstrap is on PYTHONPATH){off}"
    if rep["installed_sitecustomize"]:
        return f"Python children of this interpreter activate npu_compat (installed {rep['installed_sitecustomize']}){off}"
    return (
        "Python children do not activate npu_compat by themselves (no bootstrap on PYTHONPATH, no installed "
        "sitecustomize)"
    )


def _plugin(rep):
    if not rep["plugin_registered"]:
        return "sglang plugin entry point not registered"
    if rep["disabled"]:
        return "sglang plugin entry point registered, but NPU_COMPAT_DISABLE keeps it from activating npu_compat"
    return "sglang plugin entry point registered: every sglang process activates npu_compat"


def _device_text(d):
    text = f"{'NPU' if d['npu'] else 'not NPU'}: {d['reason']}"
    if d["decided_by"] == "files":
        text += " (from installed files; torch not imported)"
    return text


def _settings_lines(rep):
    values = ", ".join(f"{k} {v}" for k, v in rep["settings"].items())
    lines = _field("settings", values + " (NPU_COMPAT_*)")
    for w in rep["setting_warnings"]:
        lines += _cli_util.wrap(f"WARNING {w}", WIDTH, first=" " * LABEL, indent=" " * (LABEL + 2))
    return lines


BAD = (core.FAILED, core.INCOMPATIBLE, core.REPLACED, core.IMPORT_ERROR)


def _patch_groups(patches):
    """[(state, [patches])] in first-seen order: records in the same state collapse into one line."""
    groups = {}
    for p in patches:
        groups.setdefault(p["state"], []).append(p)
    return list(groups.items())


def _patches_brief(rep):
    lines = [f"patches:    {len(rep['patches'])} (`npu-compat status --verbose` shows each in full)"]
    for state, group in _patch_groups(rep["patches"]):
        reasons = {p["reason"] for p in group}
        if (state in BAD and len(reasons) > 1) or len(group) == 1:
            for p in group:  # a bad state is worth its own line, with its reason
                lines += _cli_util.wrap(f"{p['name']}: {p['reason']}", WIDTH, first=f"  {state:<14}",
                                        indent=" " * 18)  # fmt: skip
            continue
        names = ", ".join(p["name"] for p in group)
        lines += _cli_util.wrap(f"{len(group)}: {names}", WIDTH, first=f"  {state:<14}", indent=" " * 18)
        reason = reasons.pop() if len(reasons) == 1 else None
        if reason and not reason.endswith(rep["device"]["reason"]):  # the device line says that already
            lines += _cli_util.wrap(reason, WIDTH, indent=" " * 18)
    return lines


def _patches_full(rep):
    lines = [f"patches:    {len(rep['patches'])} (name and state; target; reason; what is there now)"]
    for p in rep["patches"]:
        lines.append(f"  {p['name']:<38} {p['state']}")
        lines += _cli_util.wrap(f"{p['module']}.{p['function']}", WIDTH, indent="    ")
        lines += _cli_util.wrap(p["reason"], WIDTH, indent="    ")
        lines += _cli_util.wrap(f"now: {p['installed']}; upstream: {p['upstream']}", WIDTH, indent="    ")
    return lines


def _compiles(rep, verbose):
    c_all = rep["compiles"]
    lines = []
    if not verbose:
        fell = sum(1 for c in c_all if c.get("fell_back"))
        eager = sum(1 for c in c_all if c["eager"])
        measured = [c["speed"] for c in c_all if c.get("speed")]
        picked = sum(1 for s in measured if s.get("picked") == "eager")
        speed = f"; speed measured for {len(measured)} ({picked} picked eager)" if measured else ""
        if c_all:
            lines += _field("compiles", f"{len(c_all)} seen here: {eager} eager ({fell} fell back), "
                                        f"{len(c_all) - eager} compiled{speed}")  # fmt: skip
        return lines
    lines.append(f"compiles by sglang seen on NPU in this process: {len(c_all)}")
    for c in c_all:
        eager = f"eager ({c['why']})" if c["eager"] else "COMPILED"
        fb = c.get("fell_back")
        if fb:
            eager = f"FELL BACK at {fb['stage']}: {fb['type']}: {fb['message']}; runs eagerly"
        called = {True: "called", False: "not called yet", None: "-"}[c["called"]]
        lines += _cli_util.wrap(f"{c['target']}  [{c['backend']}]", WIDTH, indent="  ")
        lines += _cli_util.wrap(f"{eager}; {called}; at {c['where']}", WIDTH, indent="    ")
        sp = c.get("speed")
        if sp and sp.get("compiled_us") is not None:
            picked = f"picked {sp['picked']}" if sp.get("picked") else f"faster: {sp.get('faster')}"
            lines += _cli_util.wrap(
                f"speed: compiled {sp['compiled_us']:.1f} us, eager {sp['eager_us']:.1f} us over {sp['samples']} "
                f"calls each ({sp['timer']}, {sp['regime']}): {picked}", WIDTH, indent="    ")  # fmt: skip
    return lines


def summary(rep):
    """One line: the verdict of the whole report."""
    counts = {}
    for p in rep["patches"]:
        counts[p["state"]] = counts.get(p["state"], 0) + 1
    bad = sum(counts.get(s, 0) for s in BAD)
    where = "NPU" if rep["device"]["npu"] else "not NPU"
    setup = "active" if rep["active"] else "not set up here"
    text = f"{where}; {setup}; " + ", ".join(f"{n} {s}" for s, n in counts.items())
    if bad:
        text += f"; {bad} to look at"
    if rep["setting_warnings"]:
        text += f"; {_plural(len(rep['setting_warnings']), 'bad setting')}"
    return text


def _plural(n, word):
    return f"{n} {word}{'' if n == 1 else 's'}"


def format_text(rep, verbose=False):
    """The report for 80 columns; without ``verbose`` it fits 24 rows in the common cases."""
    v = rep["versions"]
    lines = [f"npu-compat {rep['npu_compat']}, Python {rep['python']}"]
    lines += _field("device", _device_text(rep["device"]))
    if rep["device"].get("preview"):
        lines += _field("preview", rep["device"]["preview"])
    lines += _field("activation", _activation(rep))
    lines += _field("children", _children(rep))
    lines += _field("plugin", _plugin(rep))
    lines += _field("versions", ", ".join(f"{k} {v[k] or '-'}" for k in ("torch", "torch_npu", "sglang", "wrapt")))
    lines += _field("python", rep["executable"])
    lines += _settings_lines(rep)
    for err in rep["registry_errors"]:
        lines += _field("registry", err)
    lines += _patches_full(rep) if verbose else _patches_brief(rep)
    if rep["device"]["npu"]:
        lines += _compiles(rep, verbose)
    lines += _field("summary", summary(rep))
    return "\n".join(lines)


def main(no_import=False, as_json=False, verbose=False):
    """``npu-compat status``: print the report; 1 when an active patch is in a bad state."""
    import json

    rep = build(import_targets=not no_import, cli=True)
    if as_json:
        print(json.dumps(rep, indent=2, default=str))
    else:
        print(format_text(rep, verbose=verbose))
    bad = {core.FAILED, core.INCOMPATIBLE, core.REPLACED, core.IMPORT_ERROR}
    if any(p["state"] in bad for p in rep["patches"]) and npu_compat.is_active():
        return 1
    # Under NPU_COMPAT_STRICT=1 a compile that fell back is a failure too (it was still served eagerly).
    from npu_compat import _env

    fell_back = any(c.get("fell_back") for c in rep.get("compiles") or ())
    return 1 if fell_back and _env.strict() else 0
