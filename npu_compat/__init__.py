"""npu_compat: sglang on Ascend NPU without torch.compile where NPU cannot take it.

``import npu_compat`` activates it: when ``sglang.srt.managers.overlap_utils``
is imported (before or after this line), its torch.compile'd helpers are
replaced on NPU by npu_compat's eager implementations (the fix of sglang PR
#26403).  Off NPU nothing is changed.  ``NPU_COMPAT_DISABLE=1`` turns it off.

This file is all that ``import npu_compat`` loads: it runs in every process
of an NPU image, so it holds only the light part of activation (state, the
watch for ``sglang``, the environment children inherit) and imports neither
torch, torch_npu, sglang, wrapt nor logging.  The rest lives in
``npu_compat.core`` and is imported when sglang starts to load.
"""

import _thread
import os
import sys

__version__ = "0.3.0"

# Top-level packages of the registry's targets (a test keeps this equal to
# npu_compat.registry.target_modules(): reading the registry here would cost
# three more module imports in every process).
WATCHED_PACKAGES = ("sglang",)

BOOTSTRAP_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bootstrap")
ORIGIN_VAR = "NPU_COMPAT_ORIGIN"  # "<route>:<pid>" of the process that first propagated
DISABLE_ALL = frozenset(("1", "true", "yes", "on", "all", "*"))
# PYTHONPATH as this process found it, before any activation changed it.
PYTHONPATH_AT_START = os.environ.get("PYTHONPATH")
# The settings activation reads (a test keeps this equal to npu_compat._env.SETTINGS).
SETTING_VARS = tuple("NPU_COMPAT_" + n for n in ("EAGER", "STRICT", "REPORT", "FALLBACK", "SPEED", "LOG_LEVEL", "DISABLE", "DEVICE"))

__all__ = [
    "NpuCompatError",
    "PatchStatus",
    "activate",
    "deactivate",
    "is_active",
    "is_npu",
    "report",
    "route",
    "routes",
    "status",
    "__version__",
]


class NpuCompatError(RuntimeError):
    """Raised only under NPU_COMPAT_STRICT=1, for an incompatible or failed patch."""


class _State:
    def __init__(self):
        self.lock = _thread.RLock()
        self.active = False
        self.generation = 0
        self.routes = []


_state = _State()


class _Sentinel:
    """A meta-path finder that notices ``sglang`` start to load, at no cost before.

    Python calls finders while holding its global import lock, so nothing may
    be imported or waited for here.  The finder only looks the module up with
    the finders after it and wraps the loader it gets: npu_compat.core
    (wrapt's hooks) is armed in ``exec_module``, when the package really
    executes.  A mere lookup (``importlib.util.find_spec("sglang")``) arms
    nothing.  Any ``sglang.*`` name counts, so an import already past the
    top-level lookup in another thread is still caught.

    The finder stays on ``sys.meta_path`` once inserted (removing a finder
    while another thread walks the list could make that thread skip one);
    disarmed it costs one call per import.
    """

    def __init__(self):
        self.watch = frozenset()
        self._local = _thread._local()

    def find_spec(self, name, path=None, target=None):
        watch = self.watch
        if not watch or name.partition(".")[0] not in watch or getattr(self._local, "busy", False):
            return None
        self._local.busy = True  # the finders below may call back into the import system
        try:
            for finder in list(sys.meta_path):
                find = None if finder is self else getattr(finder, "find_spec", None)
                spec = find(name, path, target) if find is not None else None
                if spec is not None:
                    break
            else:
                return None
        finally:
            self._local.busy = False
        loader = getattr(spec, "loader", None)
        if loader is None or isinstance(loader, (_ArmingLoader, _LegacyArmingLoader)):
            # A namespace package (no loader): keep watching; the first
            # module below it that has a loader arms.
            return None
        if hasattr(loader, "exec_module"):
            spec.loader = _ArmingLoader(loader)
        elif hasattr(loader, "load_module"):
            spec.loader = _LegacyArmingLoader(loader)
        else:
            return None
        return spec


class _ArmingLoader:
    """Wraps a watched module's loader: arms npu_compat, then executes the module."""

    def __init__(self, loader):
        self.loader = loader

    def __getattr__(self, name):  # get_code, is_package, get_resource_reader, ...
        return getattr(self.loader, name)

    def create_module(self, spec):
        create = getattr(self.loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module):
        real = self.loader
        # Hand the real loader back to everything that looks at it later.
        spec = getattr(module, "__spec__", None)
        if spec is not None and spec.loader is self:
            spec.loader = real
        if getattr(module, "__loader__", None) is self:
            try:
                module.__loader__ = real
            except Exception:
                pass
        _arm_for(module.__name__)
        real.exec_module(module)
        _loaded(module)


class _LegacyArmingLoader:
    """The same for a loader that only has the old ``load_module`` protocol."""

    def __init__(self, loader):
        self.loader = loader

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def load_module(self, fullname):
        _arm_for(fullname)
        module = self.loader.load_module(fullname)
        _loaded(module)
        return module


def _arm_for(name):
    top = name.partition(".")[0]
    if top in _sentinel.watch:
        _sentinel.watch = _sentinel.watch - {top}
        _arm_package(top)


def _loaded(module):
    # The module that armed npu_compat (or one whose loader npu_compat
    # wrapped) was not seen by wrapt's finder: evaluate it now.
    core = sys.modules.get("npu_compat.core")
    if core is not None:
        try:
            core.loaded(module)
        except NpuCompatError:
            raise
        except Exception:
            pass


def _arm_package(package):
    from npu_compat import core

    try:
        core.arm_package(package)
    except NpuCompatError:
        raise  # NPU_COMPAT_STRICT=1 asked for it
    except Exception as exc:  # never fail the host's import
        from npu_compat import _log

        _log.warning("npu_compat: could not arm the import hook: %s: %s", type(exc).__name__, exc)


_sentinel = _Sentinel()


def _norm(path):
    return os.path.normcase(os.path.abspath(path)) if path else path


def _is_bootstrap(entry):
    if entry == BOOTSTRAP_DIR:  # the usual case, and the cheap test: no getcwd()
        return True
    return bool(entry) and _norm(entry) == _norm(BOOTSTRAP_DIR)


def _without_bootstrap(pythonpath):
    # An empty entry ("/x:" after `PYTHONPATH=/x:$PYTHONPATH`) means the
    # current directory: keep it.  Only an unset or empty variable has none.
    return [p for p in pythonpath.split(os.pathsep) if not _is_bootstrap(p)] if pythonpath else []


def child_env(env, route="run"):
    """A copy of ``env`` under which a Python child activates npu_compat.

    The bootstrap directory goes first on PYTHONPATH, exactly once however
    often this nests.
    """
    env = dict(env)
    env["PYTHONPATH"] = os.pathsep.join([BOOTSTRAP_DIR] + _without_bootstrap(env.get("PYTHONPATH")))
    env.setdefault(ORIGIN_VAR, f"{route}:{os.getpid()}")
    return env


def _propagate(route):
    # Children (multiprocessing spawn/forkserver, subprocess) inherit this
    # environment; the sitecustomize in BOOTSTRAP_DIR activates them.
    before = {k: os.environ[k] for k in ("PYTHONPATH", ORIGIN_VAR) if k in os.environ}
    for key, value in child_env(before, route).items():
        if before.get(key) != value:
            os.environ[key] = value


def _unpropagate():
    """Take the bootstrap directory (ours or inherited) out of the environment."""
    rest = os.pathsep.join(_without_bootstrap(os.environ.get("PYTHONPATH")))
    if rest:
        os.environ["PYTHONPATH"] = rest
    else:
        os.environ.pop("PYTHONPATH", None)
    os.environ.pop(ORIGIN_VAR, None)


def disabled_by_env():
    return os.environ.get("NPU_COMPAT_DISABLE", "").strip().lower() in DISABLE_ALL


def activate(route: str = "api") -> bool:
    """Turn npu_compat on in this process and in the Python children it starts.

    Idempotent.  Patches apply when their target module is imported, or at
    once if it already is.  Returns True when active; ``NPU_COMPAT_DISABLE=1``
    makes it a no-op that returns False.

    The ``plugin`` route does not write the environment: sglang loads the
    plugin in each of its processes itself, and the scheduler process is
    multi-threaded by then (``setenv`` can race a native ``getenv``).
    """
    if disabled_by_env():
        return False
    with _state.lock:
        if route not in _state.routes:
            _state.routes.append(route)
        if _state.active:
            return True
        _state.active = True
        _state.generation += 1
        if route != "plugin":
            _propagate(route)
        now = [p for p in WATCHED_PACKAGES if p in sys.modules]
        later = frozenset(WATCHED_PACKAGES) - set(now)
        if later:
            _sentinel.watch = _sentinel.watch | later
            if _sentinel not in sys.meta_path:
                sys.meta_path.insert(0, _sentinel)
    if any(v in os.environ for v in SETTING_VARS) and not _own_command():
        _check_settings()  # a mistyped setting warns now, not only once sglang loads
    for package in now:  # already loading or loaded: hook up at once
        _arm_package(package)
    return _state.active


def _own_command():
    # `npu-compat ...` shows the settings itself (`status` in its text): no
    # WARNING on stderr from its own activation as well.
    argv = getattr(sys, "orig_argv", None) or []
    if len(argv) > 1 and os.path.basename(argv[1]) == "npu-compat":
        return True
    return "-m" in argv and argv.index("-m") + 1 < len(argv) and argv[argv.index("-m") + 1] == "npu_compat"


def _check_settings():
    try:
        from npu_compat import settings

        settings.check_settings()
    except Exception:
        pass


def is_active() -> bool:
    return _state.active


def routes() -> "tuple[str, ...]":
    """Every route that called activate() in this process, in order."""
    return tuple(_state.routes)


def route() -> "str | None":
    """The route that activated this process, most specific first (None if inactive).

    "import" is also recorded when an entry point (plugin, sitecustomize)
    imports the package, so it ranks last.
    """
    for r in ("inherited", "run", "sitecustomize", "plugin", "api", "import"):
        if r in _state.routes:
            return r
    return _state.routes[0] if _state.routes else None


def deactivate() -> bool:
    """Undo activate(): originals back, hooks off, environment restored.  See core."""
    from npu_compat import core

    return core.deactivate()


def status() -> "tuple[PatchStatus, ...]":
    """Live state of every patch: a tuple of PatchStatus.  See core.status."""
    from npu_compat import core

    return core.status()


def report(import_targets: bool = False) -> dict:
    """Everything ``npu-compat status`` shows, as a dict."""
    from npu_compat import info

    return info.build(import_targets=import_targets)


def is_npu() -> bool:
    """True when this process runs on an Ascend NPU; never raises."""
    from npu_compat import device

    return device.is_npu()


TYPE_CHECKING = False
if TYPE_CHECKING:  # PatchStatus is loaded on first use
    from npu_compat.core import PatchStatus  # noqa: F401


def __getattr__(name):
    if name == "PatchStatus":
        from npu_compat.core import PatchStatus

        return PatchStatus
    raise AttributeError(f"module 'npu_compat' has no attribute {name!r}")


def _imported_by_the_plugin():
    # sglang's plugin loader imports npu_compat.plugin, whose load() then
    # activates with route "plugin" (no environment writes): this import is
    # its parent package's.  CPython holds the child's import lock meanwhile.
    try:
        # importlib._bootstrap is already loaded as _frozen_importlib; importing
        # it by that name would load the importlib package (and warnings).
        bootstrap = sys.modules.get("_frozen_importlib")
        if bootstrap is None:
            return False
        ref = bootstrap._module_locks.get(__name__ + ".plugin")
        lock = ref() if ref is not None else None
        return lock is not None and lock.owner == _thread.get_ident()
    except Exception:
        return False


def _after_fork_in_child():
    # A fork while another thread held the lock would leave it held forever
    # in the child: start the child with a fresh one.
    _state.lock = _thread.RLock()


def _activate_on_import():
    # Importing must never break the importer: report and go on.
    if _imported_by_the_plugin():
        return
    try:
        activate(route="import")
    except NpuCompatError:
        raise  # NPU_COMPAT_STRICT=1 asked for it
    except Exception as exc:
        from npu_compat import _log

        _log.warning("npu_compat: activation on import failed: %s: %s", type(exc).__name__, exc)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
_activate_on_import()
