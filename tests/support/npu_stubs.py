"""Stub packages for the Ascend software stack, for a simulated NPU on a CPU.

``fake_npu.install()`` makes torch look like it runs on an NPU; sglang then
imports Ascend-only packages (``torch_npu``, ``torchair``, ``sgl_kernel_npu``,
``acl``) that cannot be imported without Huawei's CANN runtime.  ``install()``
puts a finder first on ``sys.meta_path`` that serves a stand-in for each of
them and for any submodule: a package whose every attribute is a dummy class.
A dummy class can be called, subclassed, used as a decorator, and answers
every attribute with another dummy class.  Nothing here computes anything: it
only lets modules import.  Process-wide: use it in a subprocess.
"""

import importlib.abc
import importlib.machinery
import sys
import types

STUBBED = ("torch_npu", "torchair", "sgl_kernel_npu", "acl")
STUB_VERSION = "2.14.0"  # what a stub package reports as __version__


def _is_dunder(name):
    return name.startswith("__") and name.endswith("__")


class _DummyMeta(type):
    """Class-level attribute access on a dummy class yields another one."""

    def __getattr__(cls, name):
        if _is_dunder(name):
            raise AttributeError(name)
        return _dummy_class(f"{cls.__qualname__}.{name}")

    def __iter__(cls):
        return iter(())

    def __len__(cls):
        return 0

    def __bool__(cls):
        return True

    def __call__(cls, *args, **kwargs):
        # A stub class used directly as a decorator leaves the function be;
        # classes that merely subclass a stub are built normally.
        if (
            "_npu_stub_dummy" in cls.__dict__
            and len(args) == 1
            and not kwargs
            and callable(args[0])
        ):
            return args[0]
        return super().__call__(*args, **kwargs)


class _DummyBase(metaclass=_DummyMeta):
    """Instances accept anything and answer with more dummies."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        # Used as a decorator factory's result: hand back the decorated thing.
        if len(args) == 1 and not kwargs and callable(args[0]):
            return args[0]
        return type(self)()

    def __getattr__(self, name):
        if _is_dunder(name):
            raise AttributeError(name)
        return _dummy_class(f"{type(self).__qualname__}.{name}")

    def __iter__(self):
        return iter(())

    def __len__(self):
        return 0

    def __bool__(self):
        return False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _dummy_class(qualname):
    name = qualname.rsplit(".", 1)[-1]
    cls = _DummyMeta(name, (_DummyBase,), {"__module__": __name__, "_npu_stub_dummy": True})
    cls.__qualname__ = qualname
    return cls


class _StubModule(types.ModuleType):
    """A stub package: any non-dunder attribute is a dummy class (cached)."""

    def __getattr__(self, name):
        if _is_dunder(name):
            raise AttributeError(name)
        value = _dummy_class(f"{self.__name__}.{name}")
        setattr(self, name, value)
        return value


class _StubLoader(importlib.abc.Loader):
    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []  # a package, so that submodules import too
        module.__version__ = STUB_VERSION
        module.__npu_stub__ = True
        return module

    def exec_module(self, module):
        if module.__name__ == "torchair":
            module.get_npu_backend = get_npu_backend


# NPU_STUB_TORCHAIR picks how the stub torchair backend behaves, read when it
# compiles (so a test can switch it between sites): "" (a working backend that
# runs the FX graph as it is), "fail-compile" (raises in the backend call, as a
# GE graph that cannot be built) or "fail-first-run" (the compiled graph raises
# on its first call, as torchair's GE compile does when it fails there).
TORCHAIR_MODE_VAR = "NPU_STUB_TORCHAIR"


class GeError(RuntimeError):
    """What the stub NPU compiler raises."""


def get_npu_backend(compiler_config=None, **kwargs):
    def npu_backend(gm, example_inputs, **kw):
        import os

        mode = os.environ.get(TORCHAIR_MODE_VAR, "")
        if mode == "fail-compile":
            raise GeError("stub GE graph build failed: op not supported")
        if mode == "fail-first-run":
            ran = []

            def run(*args):
                if not ran:
                    ran.append(1)
                    raise GeError("stub GE graph failed on its first run")
                return gm.forward(*args)

            return run
        return gm.forward

    npu_backend.__module__ = "torchair.npu_fx_compiler"  # where torchair's own backend lives
    return npu_backend


class StubFinder(importlib.abc.MetaPathFinder):
    """Serves ``STUBBED`` packages and all their submodules."""

    def __init__(self, names=STUBBED):
        self.names = frozenset(names)
        self.loader = _StubLoader()

    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] not in self.names:
            return None
        return importlib.machinery.ModuleSpec(fullname, self.loader, is_package=True)


_finder = None


def install(names=STUBBED):
    """Put the stub finder first on ``sys.meta_path`` (idempotent)."""
    global _finder
    if _finder is None:
        _finder = StubFinder(names)
    if _finder in sys.meta_path:
        sys.meta_path.remove(_finder)
    sys.meta_path.insert(0, _finder)
    return _finder
