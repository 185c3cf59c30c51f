"""Activation: when a target module is imported, decide per patch, apply, record.

How the pieces fit:

* ``npu_compat.activate()`` (in ``__init__``) is the one entry point of every
  route (import, plugin, sitecustomize, ``npu-compat run``).  It is
  idempotent and cheap: it only arms a finder that watches for ``sglang``.
* When ``sglang`` is first looked up (or at once, if it is already loaded),
  :func:`arm_package` imports wrapt and registers wrapt's post-import hook for
  each target module; wrapt then calls :func:`_on_import` right after the
  module has executed (or at once if it already had).
* :func:`_on_import` runs the decision chain of each patch and installs the
  own implementation where needed.  It never raises (unless
  ``NPU_COMPAT_STRICT=1`` asks for it): wrapt would turn an exception into a
  failed ``import sglang...``.
* ``status()`` reads the live module every time.

Threads: one re-entrant lock guards the state.  It is never held while
waiting for another thread's import, so it cannot deadlock with the import
system's per-module locks.
"""

import sys

import npu_compat
from npu_compat import NpuCompatError, _env, _log, device, registry

_light = npu_compat._state  # lock, active, generation, routes

APPLIED = "applied"
NOT_NEEDED = "not-needed"
ABSENT = "absent"
INCOMPATIBLE = "incompatible"
UPSTREAM_FIXED = "upstream-fixed"
FAILED = "failed"
PENDING = "pending"
DISABLED = "disabled"
INACTIVE = "inactive"
NOT_INSTALLED = "not-installed"
REPLACED = "replaced"
IMPORT_ERROR = "import-error"  # only from `npu-compat status`, which imports the target itself

STATES = (
    APPLIED, NOT_NEEDED, ABSENT, INCOMPATIBLE, UPSTREAM_FIXED, FAILED,
    PENDING, DISABLED, INACTIVE, NOT_INSTALLED, REPLACED, IMPORT_ERROR,
)  # fmt: skip

_MISSING = object()


class PatchStatus:
    """The live state of one patch, as :func:`status` reports it."""

    __slots__ = ("name", "module", "function", "state", "reason", "installed", "upstream")

    def __init__(self, patch, state, reason, installed):
        self.name = patch.name
        self.module = patch.module
        self.function = patch.function
        self.state = state
        self.reason = reason
        self.installed = installed  # what sits at module.function now
        self.upstream = patch.upstream

    def as_dict(self):
        return {k: getattr(self, k) for k in self.__slots__}

    def __repr__(self):
        return f"<PatchStatus {self.name}: {self.state}>"


class _Outcome:
    __slots__ = ("state", "reason", "seen", "ours")

    def __init__(self, state, reason, seen=_MISSING, ours=_MISSING):
        self.state, self.reason, self.seen, self.ours = state, reason, seen, ours


class _State:
    def __init__(self):
        self.outcomes = {}  # patch name -> _Outcome, for the current activation
        self.originals = {}  # (module, attr) -> first original seen (first wins)
        self.hooks = {}  # module name -> hook registered with wrapt
        self.evaluated = {}  # module name -> (generation, module object) last evaluated


_state = _State()


def arm_package(package):
    """Hook up every target module inside ``package`` (called once it loads)."""
    _, errors = registry.load()
    for err in errors:
        _log.warning_once(("registry", err), "npu_compat: %s", err)
    if errors and _env.strict():
        raise NpuCompatError(f"npu_compat: bad patch registry: {'; '.join(errors)} (NPU_COMPAT_STRICT=1)")
    for mod in registry.target_modules():
        if mod.partition(".")[0] == package:
            _arm(mod)


class _Registering:
    """Per thread: is this thread inside wrapt.register_post_import_hook?"""

    def __init__(self):
        import _thread

        self._local = _thread._local()

    @property
    def active(self):
        return getattr(self._local, "on", False)

    @active.setter
    def active(self, value):
        self._local.on = value


_registering = _Registering()


def _arm(module_name):
    """Register wrapt's post-import hook for one target module.

    Then make sure the module is evaluated even if an import of it was
    already under way in another thread: wrapt's notification reaches only
    hooks registered before the importer looked the module up.
    """
    with _light.lock:
        if not _light.active or module_name in _state.hooks:
            return
        gen = _light.generation

        def hook(module, _gen=gen):
            if _registering.active and _initializing(module):
                return  # wrapt's at-once call on a module still executing: reconciled below
            _on_import(module, _gen)

        _state.hooks[module_name] = hook
    try:
        import wrapt
    except Exception as exc:
        _fail_module(module_name, f"wrapt cannot be imported ({type(exc).__name__}: {exc})")
        return
    _registering.active = True
    try:
        wrapt.register_post_import_hook(hook, module_name)
    finally:
        _registering.active = False
    # Any import of the module that started before the hook was registered
    # holds the module's import lock until it is done: wait for it (holding
    # none of ours), then evaluate what it produced.  Evaluation is
    # idempotent per activation and module object.
    _wait_for_import(module_name)
    module = sys.modules.get(module_name)
    if module is not None and not _initializing(module):
        _on_import(module, gen)


def _initializing(module):
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def _wait_for_import(name):
    """Return once no other thread is importing module `name`.

    Acquires and releases the module's import lock, as the import system
    itself does for a module another thread is still executing.  Returns at
    once when this thread is the importer (the lock is re-entrant).
    """
    import importlib._bootstrap as bootstrap

    wait = getattr(bootstrap, "_lock_unlock_module", None)
    if wait is not None:
        try:
            wait(name)
        except Exception:
            pass


def _fail_module(module_name, reason):
    with _light.lock:
        for p in registry.all_patches():
            if p.module == module_name:
                _state.outcomes[p.name] = _Outcome(FAILED, reason)
    _log.warning("npu_compat: cannot patch %s: %s", module_name, reason)
    if _env.strict():
        raise NpuCompatError(f"npu_compat: cannot patch {module_name}: {reason} (NPU_COMPAT_STRICT=1)")


# --- deciding and applying --------------------------------------------------


def _param_names(fn):
    # A plain function answers from its code object; anything else via inspect.
    code = getattr(fn, "__code__", None)
    if code is not None and not getattr(fn, "__wrapped__", None):
        n = code.co_argcount + code.co_kwonlyargcount
        return tuple(code.co_varnames[:n])
    import inspect

    return tuple(inspect.signature(fn).parameters)


def _sig_text(fn, names):
    try:
        import inspect

        return f"{fn.__name__}{inspect.signature(fn)}"
    except Exception:
        return f"({', '.join(names)})"


def _resolve_impl(spec):
    import importlib

    mod_name, _, attr = spec.partition(":")
    return getattr(importlib.import_module(mod_name), attr)


def _decide(patch, module, disabled_names):
    """Run the decision chain for one patch; apply it when needed."""
    if patch.name in disabled_names:
        return _Outcome(DISABLED, f"NPU_COMPAT_DISABLE names {patch.name}")
    npu, why = device.detect()
    if not npu:
        return _Outcome(NOT_NEEDED, f"not on NPU: {why}")
    current = getattr(module, patch.function, _MISSING)
    if current is _MISSING:
        return _Outcome(ABSENT, f"{patch.module} has no {patch.function} (this sglang does not define it)")
    ours = _resolve_impl(patch.impl)
    if current is ours:
        return _Outcome(APPLIED, f"{patch.function} is already npu_compat's implementation", ours, ours)
    original = getattr(current, "_torchdynamo_orig_callable", None)
    names = _param_names(original if original is not None else current)
    if names != patch.params:
        found = _sig_text(original if original is not None else current, names)
        reason = (
            f"{patch.module}.{patch.function} has parameters ({', '.join(names)}), "
            f"expected ({', '.join(patch.params)}): left as it is"
        )
        _log.warning(
            "npu_compat: %s.%s is incompatible: expected %s(%s), found %s; left as it is",
            patch.module, patch.function, patch.function, ", ".join(patch.params), found,
        )  # fmt: skip
        if _env.strict():
            raise NpuCompatError(f"npu_compat: {reason} (NPU_COMPAT_STRICT=1)")
        return _Outcome(INCOMPATIBLE, reason, current)
    if original is None:
        return _Outcome(
            UPSTREAM_FIXED, f"{patch.function} is not compiled on NPU here: the upstream fix is in", current
        )
    import torch

    # What fixed upstream does: torch.compile(fn, ..., disable=is_npu()).  On
    # NPU that returns the function itself, so no wrapper frame is added.
    replacement = torch.compile(ours, disable=npu, **patch.compile_kwargs)
    setattr(module, patch.function, replacement)
    if getattr(module, patch.function, _MISSING) is not replacement:
        raise RuntimeError(f"setting {patch.module}.{patch.function} did not take effect")
    _state.originals.setdefault((patch.module, patch.function), current)
    _log.info(
        "npu_compat: %s.%s now runs eagerly on NPU (own implementation, %s)",
        patch.module, patch.function, patch.upstream,
    )  # fmt: skip
    return _Outcome(
        APPLIED,
        f"replaced upstream's torch.compile'd {patch.function} with npu_compat's eager implementation "
        f"({patch.upstream})",
        current,
        replacement,
    )


def _on_import(module, gen=None):
    """wrapt's post-import hook: evaluate every patch of this module.

    Only an explicit NPU_COMPAT_STRICT=1 lets an exception out of here.
    """
    try:
        name = module.__name__
        with _light.lock:
            if not _light.active or (gen is not None and gen != _light.generation):
                return
            done = _state.evaluated.get(name)
            if done is not None and done[0] == _light.generation and done[1] is module:
                return  # already evaluated in this activation (wrapt and _arm may both call)
            _state.evaluated[name] = (_light.generation, module)
            _, disabled_names = _env.disabled({p.name for p in registry.all_patches()})
            for patch in registry.all_patches():
                if patch.module != name:
                    continue
                try:
                    outcome = _decide(patch, module, disabled_names)
                except NpuCompatError:
                    raise
                except Exception as exc:
                    reason = f"{type(exc).__name__}: {exc}"
                    _log.warning("npu_compat: patching %s.%s failed: %s", name, patch.function, reason)
                    if _env.strict():
                        raise NpuCompatError(
                            f"npu_compat: patching {name}.{patch.function} failed: {reason} (NPU_COMPAT_STRICT=1)"
                        ) from exc
                    outcome = _Outcome(FAILED, reason)
                _state.outcomes[patch.name] = outcome
    except NpuCompatError:
        raise
    except Exception as exc:  # never fail the host's import
        try:
            _log.warning("npu_compat: post-import hook failed: %s: %s", type(exc).__name__, exc)
        except Exception:
            pass


# --- public lifecycle ---------------------------------------------------------


def deactivate():
    """Undo everything activate() did: originals back, hooks off, environment restored.

    An object that someone else installed after npu_compat is left alone.
    Returns True if npu_compat was active.
    """
    with _light.lock:
        if not _light.active:
            return False
        _light.active = False
        _light.generation += 1
        npu_compat._sentinel.watch = frozenset()
        for p in registry.all_patches():
            out = _state.outcomes.get(p.name)
            mod = sys.modules.get(p.module)
            if out is None or out.ours is _MISSING or mod is None:
                continue
            current = getattr(mod, p.function, _MISSING)
            original = _state.originals.get((p.module, p.function), out.seen)
            if current is out.ours:
                try:
                    setattr(mod, p.function, original)
                except Exception as exc:
                    _log.warning("npu_compat: could not restore %s.%s: %s", p.module, p.function, exc)
                    continue
                _state.originals.pop((p.module, p.function), None)
            else:
                _log.warning(
                    "npu_compat: %s.%s was replaced by another object after npu_compat patched it; "
                    "leaving that object in place",
                    p.module, p.function,
                )  # fmt: skip
        _state.outcomes.clear()
        _state.evaluated.clear()
        hooks, _state.hooks = _state.hooks, {}
        _light.routes.clear()
        npu_compat._unpropagate()
    _unregister(hooks)
    return True


def _unregister(hooks):
    # wrapt has no public way to drop a hook; a stale one is a no-op anyway
    # (generation check), so removing it is housekeeping only.
    importer = sys.modules.get("wrapt.importer")
    if importer is None:
        return
    try:
        with importer._post_import_hooks_lock:
            for name, hook in hooks.items():
                pending = importer._post_import_hooks.get(name)
                if pending and hook in pending:
                    pending.remove(hook)
    except Exception:
        pass


# --- introspection ------------------------------------------------------------


def _describe(obj, patch, ours):
    if obj is _MISSING:
        return "absent"
    if ours is not _MISSING and obj is ours:
        return "npu_compat"
    if getattr(obj, "_torchdynamo_orig_callable", None) is not None:
        return "upstream (torch.compile'd)"
    mod = getattr(obj, "__module__", None)
    if mod == patch.module:
        return "upstream (plain)"
    return f"other ({getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)})"


def _top_installed(module_name):
    from importlib.machinery import PathFinder

    try:
        return PathFinder.find_spec(module_name.partition(".")[0]) is not None
    except Exception:
        return True


def status():
    """Live state of every patch: a tuple of :class:`PatchStatus`.

    Read from the modules as they are now, not from flags set when patching.
    """
    patches = registry.all_patches()
    everything_off, disabled_names = _env.disabled({p.name for p in patches})
    out = []
    with _light.lock:
        active = _light.active
        outcomes = dict(_state.outcomes)
    for p in patches:
        mod = sys.modules.get(p.module)
        current = _MISSING if mod is None else getattr(mod, p.function, _MISSING)
        outcome = outcomes.get(p.name)
        ours = outcome.ours if outcome is not None else _MISSING
        installed = "not imported" if mod is None else _describe(current, p, ours)
        if not active and everything_off:
            state, reason = DISABLED, "NPU_COMPAT_DISABLE turns npu_compat off"
        elif p.name in disabled_names and outcome is None:
            state, reason = DISABLED, f"NPU_COMPAT_DISABLE names {p.name}"
        elif not active:
            state, reason = INACTIVE, "npu_compat is not active in this process"
        elif mod is None:
            if _top_installed(p.module):
                state, reason = PENDING, f"waiting for {p.module} to be imported"
            else:
                state, reason = NOT_INSTALLED, f"{p.module.partition('.')[0]} is not installed"
        elif outcome is None:
            state, reason = PENDING, f"{p.module} is imported but not evaluated yet"
        elif outcome.state == APPLIED and current is not outcome.ours:
            state = REPLACED
            reason = f"npu_compat installed its implementation, but {p.function} has been replaced since by {installed}"
        else:
            state, reason = outcome.state, outcome.reason
            if outcome.state != APPLIED and outcome.seen is not _MISSING and current is not outcome.seen:
                reason += f" (note: {p.function} has changed since: now {installed})"
        out.append(PatchStatus(p, state, reason, installed))
    return tuple(out)
