"""Activation: when a target module is imported, decide per record, apply, record.

How the pieces fit:

* ``npu_compat.activate()`` (in ``__init__``) is the one entry point of every
  route.  It is idempotent and cheap: it arms a finder that watches for
  ``sglang``.
* When ``sglang`` starts to execute (or at once, if it is already loaded),
  :func:`arm_package` imports wrapt and registers wrapt's post-import hook for
  each target module, and for ``torch``/``torch_npu``.  Nothing waits on
  another module's import lock here: an import of a target already under
  way in some thread is caught by a short-lived waiter thread, which holds
  no lock while it waits (see :func:`_catch_up`).
* :func:`_on_import` runs the decision chain (:mod:`npu_compat.apply`) of
  each record of the module.  wrapt drops a hook once it fired; it is put
  back, so a reload or a re-import is evaluated again.  It never raises
  (unless ``NPU_COMPAT_STRICT=1`` asks for it): wrapt would turn an exception
  into a failed ``import sglang...``.
* On NPU only, :func:`_npu_setup` (once torch is loaded) installs the
  torch.compile audit (:mod:`npu_compat.audit`) and walks the loaded sglang
  modules once: every other binding of a replaced compiled object is
  rewired, compiled functions made before npu_compat watched are recorded.
* ``status()`` reads the live modules every time.

Threads: one re-entrant lock guards the state.  No import and no wait for
another thread's import happens while it is held.
"""

import sys

import npu_compat
from npu_compat import NpuCompatError, _env, _log, _wrappers, apply, audit, device, fallback, intercept, registry, speed
from types import FunctionType

from npu_compat.apply import (  # noqa: F401 - the states are part of this module's API
    ABSENT,
    APPLIED,
    DISABLED,
    FAILED,
    INCOMPATIBLE,
    MISSING,
    NOT_NEEDED,
    OPT_IN,
    UPSTREAM_FIXED,
    Outcome,
)

_light = npu_compat._state  # lock, active, generation, routes

PENDING = "pending"
INACTIVE = "inactive"
NOT_INSTALLED = "not-installed"
REPLACED = "replaced"
IMPORT_ERROR = "import-error"  # only from `npu-compat status`, which imports the target itself

STATES = (
    APPLIED, NOT_NEEDED, ABSENT, INCOMPATIBLE, UPSTREAM_FIXED, FAILED, DISABLED, OPT_IN,
    PENDING, INACTIVE, NOT_INSTALLED, REPLACED, IMPORT_ERROR,
)  # fmt: skip


class PatchStatus:
    """The live state of one record, as :func:`status` reports it."""

    __slots__ = ("name", "kind", "module", "function", "state", "reason", "installed", "upstream", "default")

    def __init__(self, rec, state, reason, installed):
        self.name = rec.name
        self.kind = rec.kind
        self.module = rec.module
        self.function = rec.qualname
        self.state = state
        self.reason = reason
        self.installed = installed  # what sits at module.function now
        self.upstream = rec.upstream
        self.default = rec.default

    def as_dict(self):
        return {k: getattr(self, k) for k in self.__slots__}

    def __repr__(self):
        return f"<PatchStatus {self.name}: {self.state}>"


class _State:
    def __init__(self):
        self.outcomes = {}  # record name -> Outcome, for the current activation
        self.originals = {}  # (module, qualname) -> the upstream object last replaced
        self.hooks = {}  # module name -> hook registered with wrapt
        self.swaps = apply.Swaps()
        self.records = None  # registry + NPU_COMPAT_EAGER sites, fixed per activation
        self.setting = audit.Setting()
        self.interceptor = None
        self.npu_ready = None  # generation whose NPU set-up ran
        self.waiting = {}  # module name -> waiter threads not finished
        self.call_guards = {}  # (module, function qualname) -> name of a guard of scope "calls"
        self.walk_ms = None
        self.codes = None  # code objects of torch's compile/disable wrappers (apply.wrapper_codes)
        self.fallback = True  # NPU_COMPAT_FALLBACK
        self.site_guards = None  # (module, qualname) -> guard name, made eager at definition


_state = _State()


# --- the records of this activation ------------------------------------------------------


def records():
    """The registry's records plus a guard per ``module:qualname`` of NPU_COMPAT_EAGER."""
    recs = _state.records
    if recs is not None:
        return recs
    base = registry.all_patches()
    setting = audit.eager_setting()
    extra, named = [], set()
    taken = {(r.module, r.qualname): r.name for r in base}
    for mod, qual in sorted(setting.sites):
        if (mod, qual) in taken:
            named.add(taken[(mod, qual)])  # an opt-in record named by its site
            continue
        extra.append(
            registry.Guard(
                name=f"eager:{mod}:{qual}",  # the site as the user wrote it, case kept
                module=mod,
                qualname=qual,
                scope="auto",
                why="named by NPU_COMPAT_EAGER",
                evidence="the user's setting",
                versions="any",
                upstream="NPU_COMPAT_EAGER",
                remove_when="when NPU_COMPAT_EAGER no longer names it",
            )
        )
    with _light.lock:
        if _state.records is None:
            _state.setting = audit.Setting(setting.mode, setting.names | named, setting.sites, setting.files)
            _state.records = base + tuple(extra)
            _state.call_guards = {
                (r.module, r.qualname): r.name
                for r in _state.records
                if getattr(r, "scope", "site") in ("calls", "auto")
            }
        return _state.records


def _opted_in():
    s = _state.setting
    return s.names | {r.name for r in (_state.records or ()) if r.name.startswith("eager:")}


# --- arming -------------------------------------------------------------------------------


def arm_package(package):
    """Hook up every target module inside ``package`` (called once it starts to load)."""
    _, errors = registry.load()
    _env.check_at_activation(r.name for r in records())
    for err in errors:
        _log.warning_once(("registry", err), "npu_compat: %s", err)
    if errors and _env.strict():
        raise NpuCompatError(f"npu_compat: bad patch registry: {'; '.join(errors)} {_env.strict_note()}")
    mods = []
    for rec in records():
        if rec.module.partition(".")[0] == package and rec.module not in mods:
            mods.append(rec.module)
    try:
        import wrapt  # noqa: F401 - the hooks are wrapt's
    except Exception as exc:
        _fail_modules(mods, f"wrapt cannot be imported ({type(exc).__name__}: {exc})")
        return
    for mod in mods:
        _arm(mod, _module_hook)
    _say_loaded(package, mods)
    if device.decided_not_npu():
        return  # off NPU for sure: nothing to watch torch for
    for mod in ("torch", "torch_npu"):
        _arm(mod, _device_hook)


def _say_loaded(package, mods):
    _log.info(
        "npu_compat %s: active in this process (route %s); %d records watch %d %s modules",
        npu_compat.__version__, npu_compat.route(), len(records()), len(mods), package,
    )  # fmt: skip
    _log.debug("npu_compat: post-import hooks on %s", ", ".join(mods) or "no module")


_said_device = None  # the last (is_npu, reason) logged


def _say_device(npu, why):
    global _said_device
    if _said_device != (npu, why):
        _said_device = (npu, why)
        _log.info("npu_compat: device: %s (%s)", "NPU" if npu else "not an NPU: nothing in sglang is changed", why)


def _say_decisions(decided):
    for rec, before, outcome in decided:
        if before is None or (before.state, before.reason) != (outcome.state, outcome.reason):
            _log.info("npu_compat: %s: %s: %s (%s)", rec.name, outcome.state, outcome.reason, rec.target)


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


def _module_hook(module, gen):
    _on_import(module, gen)


def _device_hook(module, gen):
    _reevaluate_off_npu(gen)
    _npu_setup(gen)
    if _state.walk_ms is not None and _state.npu_ready == gen:
        _say_device(*device.detect())
        _log.debug(
            "npu_compat: on NPU: torch.compile calls by sglang are audited; the walk of the loaded sglang "
            "modules took %.1f ms (%d compiled functions seen)", _state.walk_ms, len(compiles()),
        )  # fmt: skip


def _reevaluate_off_npu(gen):
    """torch_npu loaded after the targets (torch < 2.5, TORCH_DEVICE_BACKEND_AUTOLOAD=0):
    the records decided ``not-needed`` then are decided again, now on NPU.

    Before :func:`_npu_setup`, whose walk then rewires every other binding.
    """
    try:
        if not device.is_npu():
            return
        with _light.lock:
            if not _light.active or gen != _light.generation:
                return
            names = {p.module for p in records() if getattr(_state.outcomes.get(p.name), "state", None) == NOT_NEEDED}
        for name in sorted(names):
            module = sys.modules.get(name)
            if module is not None and not _initializing(module):
                _log.debug("npu_compat: %s: decided off NPU before torch_npu loaded; deciding again", name)
                _on_import(module, gen)
    except NpuCompatError:
        raise
    except Exception as exc:
        _log.warning("npu_compat: re-deciding after torch_npu loaded failed: %s: %s", type(exc).__name__, exc)


def _arm(module_name, action):
    """Register wrapt's post-import hook for one module, and catch up on an import under way."""
    with _light.lock:
        if not _light.active or module_name in _state.hooks:
            return
        gen = _light.generation

        def hook(module, _gen=gen):
            if _registering.active and _initializing(module):
                return  # wrapt's at-once call on a module still executing: _catch_up waits for it
            try:
                action(module, _gen)
            finally:
                _rearm(module_name, hook, _gen)

        _state.hooks[module_name] = hook
    import wrapt

    _registering.active = True
    try:
        wrapt.register_post_import_hook(hook, module_name)
    finally:
        _registering.active = False
    _catch_up(module_name, gen, hook)


def _rearm(module_name, hook, gen):
    """Put back a hook wrapt dropped after it fired, for a reload or a re-import.

    wrapt's public API calls a hook at once when the module is loaded and
    keeps none, so the hook goes back into wrapt's own table, under wrapt's
    lock.  Without that table (a future wrapt), a re-executed module is
    reported ``replaced`` instead.
    """
    with _light.lock:
        if gen != _light.generation or _state.hooks.get(module_name) is not hook:
            return
    importer = sys.modules.get("wrapt.importer")
    table = getattr(importer, "_post_import_hooks", None)
    lock = getattr(importer, "_post_import_hooks_lock", None)
    if not isinstance(table, dict) or lock is None:
        return
    try:
        with lock:
            pending = table.setdefault(module_name, [])
            if hook not in pending:
                pending.append(hook)
    except Exception:
        pass


def _initializing(module):
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def _import_owner(name):
    """The thread id holding the import lock of module ``name`` (CPython's own), None if free.

    -1 when it cannot be told: a waiter then makes sure.
    """
    try:
        import importlib._bootstrap as bootstrap

        ref = bootstrap._module_locks.get(name)
        lock = ref() if ref is not None else None
        return None if lock is None else lock.owner
    except Exception:
        return -1


def _catch_up(name, gen, hook):
    """Evaluate an import of ``name`` that began before wrapt's hook was registered.

    Such an import holds the module's import lock and was not seen by
    wrapt's finder.  Waiting for it here could deadlock (this thread may hold
    the lock of a parent package the importer needs), so a waiter thread
    that holds nothing waits for it and evaluates the result.
    """
    import _thread

    module = sys.modules.get(name)
    owner = _import_owner(name)
    if module is None and owner == _thread.get_ident():
        return  # this thread's own import, not yet at the finders: wrapt will see it
    if owner is not None or (module is not None and _initializing(module)):
        _start_waiter(name, gen, hook)


def _start_waiter(name, gen, hook):
    import _thread

    with _light.lock:
        _state.waiting[name] = _state.waiting.get(name, 0) + 1

    def wait():
        try:
            import importlib._bootstrap as bootstrap

            bootstrap._lock_unlock_module(name)
            module = sys.modules.get(name)
            if module is not None and not _initializing(module):
                hook(module)
        except NpuCompatError as exc:  # strict mode, but no importer to raise into
            _log.warning("%s", exc)
        except Exception as exc:
            _log.warning("npu_compat: evaluating %s after another thread's import failed: %s", name, exc)
        finally:
            with _light.lock:
                left = _state.waiting.get(name, 1) - 1
                if left:
                    _state.waiting[name] = left
                else:
                    _state.waiting.pop(name, None)

    _thread.start_new_thread(wait, ())


def settle(timeout=10.0):
    """Wait (up to ``timeout`` s) until no waiter thread is pending; True when none is."""
    import time

    end = time.monotonic() + timeout
    while _state.waiting:
        if time.monotonic() > end:
            return False
        time.sleep(0.001)
    return True


def loaded(module):
    """Called by npu_compat's own arming loader after a watched module executed.

    wrapt's finder did not see that module (the hook was registered during
    its own import), so it is evaluated here.
    """
    hook = _state.hooks.get(getattr(module, "__name__", None))
    if hook is not None:
        hook(module)


def _fail_modules(module_names, reason):
    with _light.lock:
        for p in records():
            if p.module in module_names:
                _state.outcomes[p.name] = Outcome(FAILED, reason)
    what = ", ".join(module_names)
    _log.warning("npu_compat: cannot patch %s: %s", what, reason)
    if _env.strict():
        raise NpuCompatError(f"npu_compat: cannot patch {what}: {reason} {_env.strict_note()}")


# --- deciding and applying -----------------------------------------------------------------


def _resolve_impl(spec):
    import importlib

    mod_name, _, attr = spec.partition(":")
    return getattr(importlib.import_module(mod_name), attr)


def _failed(rec, exc):
    reason = f"{type(exc).__name__}: {exc}"
    _log.warning("npu_compat: patching %s failed: %s", rec.target, reason)
    if _env.strict():
        raise NpuCompatError(f"npu_compat: patching {rec.target} failed: {reason} {_env.strict_note()}") from exc
    return Outcome(FAILED, reason)


def _on_import(module, gen=None):
    """Evaluate every record of this module.  Only NPU_COMPAT_STRICT=1 lets an exception out."""
    try:
        name = module.__name__
        recs = [r for r in records() if r.module == name]
        if not recs:
            return
        # Outside the lock: detection may import torch, an implementation imports torch.
        npu, why = device.detect()
        _say_device(npu, why)
        decided = []
        impls = {}
        if npu:
            for rec in recs:
                if rec.kind == "implementation" and apply.resolve(module, rec.qualname)[2] is not MISSING:
                    try:
                        impls[rec.name] = _resolve_impl(rec.impl)
                    except Exception as exc:
                        impls[rec.name] = exc
        applied = False
        with _light.lock:
            if not _light.active or (gen is not None and gen != _light.generation):
                return
            _, disabled_names = _env.disabled({p.name for p in records()})
            opted = _opted_in()
            for rec in recs:
                before = _state.outcomes.get(rec.name)
                ours = before.ours if before is not None and before.state == APPLIED else MISSING
                if before is not None and before.state not in (FAILED, APPLIED) and before.seen is not MISSING:
                    if apply.resolve(module, rec.qualname)[2] is before.seen:
                        continue  # evaluated already (wrapt and a waiter may both call): same answer
                try:
                    outcome = apply.gate(rec, npu, why, disabled_names, opted)
                    if outcome is None:
                        impl = impls.get(rec.name)
                        if isinstance(impl, Exception):
                            raise impl
                        outcome = apply.decide(rec, module, ours, _state.swaps, impl)
                except NpuCompatError:
                    raise
                except Exception as exc:
                    outcome = _failed(rec, exc)
                if outcome.state == UPSTREAM_FIXED and rec.kind == "guard":
                    outcome = _made_eager_at_definition(rec, outcome) or outcome
                if outcome.state == APPLIED and outcome.seen is not outcome.ours:
                    _state.originals[(rec.module, rec.qualname)] = outcome.seen
                    applied = True
                if outcome.state == APPLIED and npu:
                    _audit_record(rec, module, outcome)
                _state.outcomes[rec.name] = outcome
                decided.append((rec, before, outcome))
            if applied:
                # Bindings made before the hook fired: the module's own, those of modules
                # still executing (a circular import) and of modules imported while it
                # executed.  A module found already loaded is covered by _npu_setup's walk.
                mods = [module] + ([] if _registering.active else _bound_meanwhile(module))
                n = apply.walk(mods, _state.swaps, codes=_wrapper_codes(sys.modules.get("torch")))
                _log.debug("npu_compat: %s: %d other bindings rewired in %d modules", name, n, len(mods) - 1)
        _say_decisions(decided)
    except NpuCompatError:
        raise
    except Exception as exc:  # never fail the host's import
        try:
            _log.warning("npu_compat: post-import hook failed: %s: %s", type(exc).__name__, exc)
        except Exception:
            pass


def _bound_meanwhile(module):
    """The modules that can hold a binding ``module`` made before its hook ran.

    Those still executing (``module`` was imported from inside them: a
    circular import) and those imported while it executed (an import at its
    bottom binds its names elsewhere before wrapt's hook fires).
    """
    watched = npu_compat.WATCHED_PACKAGES
    mods = [m for m in apply.package_modules(watched) if m is not module and _initializing(m)]
    seen = set(map(id, mods))
    mods += [m for m in apply.modules_since(module, watched) if id(m) not in seen]
    return mods


def _made_eager_at_definition(rec, outcome):
    fn = apply.unwrap(outcome.seen)
    if audit.audit.made_eager.get(id(fn)) is not fn:
        return None
    return Outcome(
        APPLIED,
        f"{rec.qualname} was made eager where it was defined: npu_compat's hook passed disable=True",
        outcome.seen, outcome.seen,
    )  # fmt: skip


def _audit_record(rec, module, outcome):
    """The audit says a site a record made eager is eager, by that record (both routes)."""
    if rec.kind == "guard" and getattr(rec, "scope", "site") == "calls":
        return  # its compilations are recorded as they are made
    seen = apply.unwrap(outcome.seen) if outcome.seen is not MISSING else None
    if seen is None:
        return
    eager = _wrappers.eager_of(seen) or seen
    entry = audit.audit.of(eager)
    if entry is None:
        where = f"{rec.module}:{rec.qualname}"
        entry = audit.audit.entry(
            f"{rec.module}:{rec.qualname}", f"{rec.module}.{rec.qualname}", where,
            "unknown (compiled before npu_compat watched)", _wrappers.source_of(eager), "found loaded",
        )  # fmt: skip
        entry.seen(eager)
    how = "npu_compat's own implementation" if rec.kind == "implementation" else "its own eager function"
    by = "setting" if rec.name.startswith("eager:") else "record"  # a site NPU_COMPAT_EAGER named
    entry.made_eager(by, f"{rec.name}: {how} ({rec.upstream})")


def _wrapper_codes(torch):
    """The code ids of torch's compile wrappers (made once, on a probe), or None before torch._dynamo."""
    if _state.codes is None and torch is not None and "torch._dynamo" in sys.modules:
        codes = apply.wrapper_codes(torch)  # None while torch is half-imported
        if codes:
            _state.codes = codes
    return _state.codes


def _npu_setup(gen):
    """On NPU, once per activation: the @PATH lists, the compile hook, one walk over loaded modules."""
    try:
        if _state.npu_ready == gen or not device.is_npu():
            return
        torch = sys.modules.get("torch")
        if torch is None or getattr(torch, "compile", None) is None:
            return
        import time

        t = time.perf_counter()
        reevaluate = []
        with _light.lock:
            if not _light.active or gen != _light.generation or _state.npu_ready == gen:
                return
            _state.npu_ready = gen
            fallback.rearm()
            if _state.setting.files:
                known = {r.name for r in records()}
                before = _state.setting.names
                _state.setting = audit.read_lists(_state.setting, known, npu_compat.WATCHED_PACKAGES)
                reevaluate = sorted({r.module for r in records() if r.name in _state.setting.names - before})
            _state.fallback = audit.fallback_enabled()
            speed.MODE[0] = speed.read_setting()
            if speed.MODE[0] and not _state.fallback:
                _log.warning("npu_compat: NPU_COMPAT_SPEED=%s needs the fallback: NPU_COMPAT_FALLBACK=0 turns it off too",
                             speed.MODE[0])  # fmt: skip
                speed.MODE[0] = None
            watched = npu_compat.WATCHED_PACKAGES
            # No torch._dynamo yet: nothing in this process was compiled, so no probe, no walk
            # (the hook below sees every compile from the first one on).
            compiled_yet = "torch._dynamo" in sys.modules
            if compiled_yet:
                _wrapper_codes(torch)
            from npu_compat import reportfile

            if reportfile.register_report(_report_state):
                audit.audit.listeners.append(reportfile.changed)  # a line when the audit's answer changes
        for name in reevaluate:  # a list file opted a record in: evaluate its module again
            mod = sys.modules.get(name)
            if mod is not None:
                _on_import(mod, gen)
        _arm("torch._dynamo", _dynamo_hook)  # the compile hook, once dynamo is there
        with _light.lock:
            if not _light.active or gen != _light.generation:
                return
            if compiled_yet:
                apply.walk(apply.package_modules(watched), _state.swaps, _found, _state.codes)
            _state.walk_ms = (time.perf_counter() - t) * 1e3
    except Exception as exc:
        _log.warning("npu_compat: NPU set-up failed: %s: %s", type(exc).__name__, exc)


def _dynamo_hook(module, gen):
    """torch._dynamo is loaded: listen on its optimize (every torch.compile ends there)."""
    try:
        with _light.lock:
            if not _light.active or gen != _light.generation or _state.interceptor is not None:
                return
            torch = sys.modules.get("torch")
            if torch is None or getattr(module, "optimize", None) is None:
                return
            _wrapper_codes(torch)  # probed before the hook is on (a probe is nobody's compile)
            _state.interceptor = intercept.Interceptor(torch, module, npu_compat.WATCHED_PACKAGES, _decide, _entry)
            _state.interceptor.install()
    except Exception as exc:
        _log.warning("npu_compat: cannot watch torch.compile: %s: %s", type(exc).__name__, exc)


def _entry(site, target, where, backend, source, when):
    e = audit.audit.entry(site, target, where, backend, source, when, fallback=_state.fallback)
    return e


def _found(holder, attr, fn):
    """The late walk met ``fn``, a compiled function: eager, a fallback wrapper, or None (leave it)."""
    if not _wrappers.is_compiled(fn):
        return None
    eager = _wrappers.eager_of(fn)
    if type(eager) is not FunctionType or (eager.__module__ or "").partition(".")[0] not in npu_compat.WATCHED_PACKAGES:
        return None  # not sglang's code: another package's compile, imported into sglang
    owner = holder.__dict__.get("__module__") if isinstance(holder, type) else holder.__name__
    site, _ = intercept.site_of(eager, owner, attr)
    backend = _backend_of(fn)
    why, by, kept = _decide(eager, site, None, owner, attr, backend)
    entry = audit.existing(holder, attr, fn, why, by, fallback=_state.fallback)
    if why is not None:
        return eager
    if not _state.fallback or fallback.is_armed(fn):
        return None
    entry.kept = kept
    interceptor = _state.interceptor
    optimize = interceptor.original if interceptor is not None else None
    intercept.arm_existing(fn, eager, entry, optimize)  # in place: every binding keeps torch's wrapper
    return None


def _backend_of(fn):
    """The backend torch.compile made for an existing compile wrapper (for the NPU graph-mode rule)."""
    ctx = _wrappers.optimize_context(fn)
    return None if ctx is None else _wrappers.user_backend(ctx)[0]


def _decide(model, site, target, caller_module, caller_function, backend):
    """``(why, by, kept)`` for one of sglang's compilations: why eager (None: compiled), by what,
    and why ``NPU_COMPAT_EAGER=all`` kept it compiled."""
    s = _state.setting
    mod, _, qual = site.partition(":")
    name = _state.call_guards.get((caller_module, caller_function))
    out = _state.outcomes.get(name)
    if out is not None and out.state == APPLIED:
        return f"guard {name}", "record", None
    rec = _site_guards().get((mod, qual))
    if rec is not None:
        return f"guard {rec}", "record", None
    if (mod, qual) in s.sites or (caller_module, caller_function) in s.sites:
        return "named by NPU_COMPAT_EAGER", "setting", None
    if s.mode == audit.EVERYTHING:
        return "NPU_COMPAT_EAGER=everything", "setting", None
    if s.mode == audit.ALL:
        torch = sys.modules.get("torch")
        if intercept.is_model_compile(model, torch) and intercept.is_npu_backend(backend):
            return None, None, "NPU graph mode: a model compiled with NPU's own backend (NPU_COMPAT_EAGER=all keeps it)"
        return "NPU_COMPAT_EAGER=all", "setting", None
    return None, None, None


def _site_guards():
    """(module, qualname) -> name of each enabled guard of one compiled site (made eager at definition)."""
    cached = _state.site_guards
    if cached is not None:
        return cached
    _, disabled = _env.disabled({p.name for p in records()})
    opted = _opted_in()
    out = {}
    for r in records():
        if r.kind != "guard" or getattr(r, "scope", "site") == "calls" or r.name in disabled:
            continue
        if r.default or r.name in opted:
            out[(r.module, r.qualname)] = r.name
    _state.site_guards = out
    return out


def _report_state():
    """What NPU_COMPAT_REPORT's writer records of this process, besides who it is."""
    return {
        "npu_compat": npu_compat.__version__,
        "route": npu_compat.route(),
        "patches": [{"name": s.name, "state": s.state} for s in npu_compat.status()],
        "compiles": compiles(),
    }


def compiles():
    """What NPU compiled in this process, as dicts (empty off NPU)."""
    return [e.as_dict() for e in list(audit.audit.entries.values())]


def fell_back():
    """The sites whose compile failed and now run eagerly, as dicts."""
    return [d for d in compiles() if d["fell_back"]]


# --- public lifecycle -------------------------------------------------------------------------


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
        for p in records():
            out = _state.outcomes.get(p.name)
            if out is None or out.ours is MISSING or out.holder is None:
                continue
            holder, attr = out.holder, out.attr
            current = vars(holder).get(attr, MISSING)
            original = _state.originals.get((p.module, p.qualname), out.seen)
            if current is out.ours:
                try:
                    setattr(holder, attr, original)
                except Exception as exc:
                    _log.warning("npu_compat: could not restore %s: %s", p.target, exc)
                    continue
                _state.originals.pop((p.module, p.qualname), None)
            else:
                _log.warning(
                    "npu_compat: %s was replaced by another object after npu_compat patched it; "
                    "leaving that object in place",
                    p.target,
                )
        apply.restore(_state.swaps)
        fallback.disarm()
        speed.detach_all()
        if _state.interceptor is not None:
            _state.interceptor.uninstall()
            _state.interceptor = None
        audit.audit.clear()
        _state.outcomes.clear()
        _state.npu_ready = None
        _state.records = None
        _state.site_guards = None
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


# --- introspection ---------------------------------------------------------------------------


def _describe(obj, rec, ours):
    if obj is MISSING:
        return "absent"
    if ours is not MISSING and (obj is ours or apply.unwrap(obj) is apply.unwrap(ours)):
        return "npu_compat" if rec.kind == "implementation" else "eager (npu_compat guard)"
    kind = _wrappers.kind(apply.unwrap(obj))
    if kind in (_wrappers.COMPILED, _wrappers.WRAPPED):
        return "upstream (torch.compile'd)"
    if kind == _wrappers.DISABLED:
        return "upstream (torch.compiler.disable'd)"
    fn = apply.unwrap(obj)
    mod = fn.__module__ if type(fn).__name__ == "function" else None
    if mod == rec.module:
        return "upstream (plain)"
    return f"other ({mod or type(fn).__module__}.{getattr(fn, '__qualname__', type(fn).__name__)})"


def _top_installed(module_name):
    from importlib.machinery import PathFinder

    try:
        return PathFinder.find_spec(module_name.partition(".")[0]) is not None
    except Exception:
        return True


def _no_such_module(module_name):
    """True when the installed package has no file for ``module_name``: a look at the files, no import.

    The top-level package is found with PathFinder (or its ``__path__`` when
    loaded); below it, each part is looked for in the directories of the
    part above (``name.py`` or another module suffix, or a ``name/``
    directory).  Any doubt (an entry that is not a directory, such as a zip
    archive) is "it may exist" (False): the record then waits as ``pending``.
    """
    import os
    from importlib.machinery import PathFinder, all_suffixes

    top, *rest = module_name.split(".")
    try:
        loaded = sys.modules.get(top)
        dirs = vars(loaded).get("__path__") if loaded is not None else None
        if dirs is None:
            spec = PathFinder.find_spec(top)
            dirs = spec.submodule_search_locations if spec is not None else None
        if dirs is None:
            return False  # not a package we can look into: not-installed is decided elsewhere
        dirs = [d for d in list(dirs) if isinstance(d, str)]
        for i, part in enumerate(rest):
            if not dirs or not all(os.path.isdir(d) for d in dirs):
                return False
            if i == len(rest) - 1 and any(os.path.isfile(os.path.join(d, part + x)) for d in dirs for x in all_suffixes()):
                return False
            dirs = [os.path.join(d, part) for d in dirs if os.path.isdir(os.path.join(d, part))]
            if not dirs:
                return True
        return False
    except Exception:
        return False


def status():
    """Live state of every record: a tuple of :class:`PatchStatus`.

    Read from the modules as they are now, not from flags set when patching.
    """
    recs = records()
    everything_off, disabled_names = _env.disabled({p.name for p in recs})
    out = []
    with _light.lock:
        active = _light.active
        outcomes = dict(_state.outcomes)
        waiting = dict(_state.waiting)
    for p in recs:
        mod = sys.modules.get(p.module)
        current = MISSING if mod is None else apply.resolve(mod, p.qualname)[2]
        outcome = outcomes.get(p.name)
        ours = outcome.ours if outcome is not None else MISSING
        installed = "not imported" if mod is None else _describe(current, p, ours)
        if not active and everything_off:
            state, reason = DISABLED, "NPU_COMPAT_DISABLE turns npu_compat off"
        elif p.name in disabled_names and outcome is None:
            state, reason = DISABLED, f"NPU_COMPAT_DISABLE names {p.name}"
        elif not active:
            state, reason = INACTIVE, "npu_compat is not active in this process"
        elif mod is None:
            if not _top_installed(p.module):
                state, reason = NOT_INSTALLED, f"{p.module.partition('.')[0]} is not installed"
            elif _no_such_module(p.module):
                state, reason = ABSENT, f"the installed {p.module.partition('.')[0]} has no module {p.module}"
            else:
                state, reason = PENDING, f"waiting for {p.module} to be imported"
        elif outcome is None:
            why = "another thread's import of it is under way" if p.module in waiting else "not evaluated yet"
            state, reason = PENDING, f"{p.module} is imported but {why}"
        elif outcome.state == APPLIED and current is not outcome.ours:
            state = REPLACED
            reason = f"npu_compat installed its {p.kind}, but {p.qualname} has been replaced since by {installed}"
        else:
            state, reason = outcome.state, outcome.reason
            if outcome.state != APPLIED and outcome.seen is not MISSING and current is not outcome.seen:
                reason += f" (note: {p.qualname} has changed since: now {installed})"
        out.append(PatchStatus(p, state, reason, installed))
    return tuple(out)
