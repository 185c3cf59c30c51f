import atexit
import contextlib
import json
import locale
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import pytest

# The test runner itself never activates npu_compat (children get a clean
# environment from clean_env): in-process tests use the modules directly.
os.environ["NPU_COMPAT_DISABLE"] = "1"
# The README gives the real-sglang interpreter relative to the checkout; tests run
# children from other directories, so it is made absolute once, here.
if os.environ.get("NPU_COMPAT_SGLANG_PYTHON"):
    os.environ["NPU_COMPAT_SGLANG_PYTHON"] = os.path.abspath(os.environ["NPU_COMPAT_SGLANG_PYTHON"])

TESTS = os.path.dirname(os.path.abspath(__file__))
# The checkout under test: the real-sglang venv imports npu_compat from here,
# whichever checkout (or worktree) its editable install points at.
ROOT = os.path.dirname(TESTS)

# The real-sglang tests that run on two releases run on the newest one in the
# suite; NPU_COMPAT_TEST_RELEASES=all (the README's `long` block, which CI runs
# after the suite) runs them on 0.5.13 too.  Keeps the suite under 15 minutes.
RELEASES = ("0.5.13", "0.5.23") if os.environ.get("NPU_COMPAT_TEST_RELEASES") == "all" else ("0.5.23",)
sys.path.insert(0, TESTS)

from fixtures import build, build_light  # noqa: E402

RESULT = "RESULT:"


def clean_env(**extra):
    """The environment of a child with no npu_compat setting inherited from the test run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NPU_COMPAT") and k != "PYTHONPATH"}
    env.update({k: v for k, v in extra.items() if v is not None})
    return env


def run_py(code, tree=None, env=None, timeout=240, args=(), check=True):
    """Run `code` as ``python -c CODE ARGS``; return (completed process, RESULT dict or None).

    The child sees the fixture `tree` and tests/ on PYTHONPATH; it reports by
    printing ``RESULT:<json>`` (support.report does that).

    Where the scenario allows it (see ``forkable``), the child is forked from
    a parent that has already imported torch (``support/zygote.py``) instead
    of being started fresh: same environment, PYTHONPATH, argv, cwd, output
    and exit status as a fresh interpreter, without the 2-9 s of ``import torch``.
    ``NPU_COMPAT_TEST_FRESH=1`` in the test run's environment turns that off
    (every child fresh, as before) to compare.
    """
    env = clean_env(**(env or {}))
    path = [p for p in (tree, TESTS) if p]
    if env.get("PYTHONPATH"):
        path.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(path)
    proc = run_python(sys.executable, textwrap.dedent(code), env, args, timeout)
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT):
            result = json.loads(line[len(RESULT) :])
    if check and result is None:
        raise AssertionError(f"child reported nothing (rc={proc.returncode})\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc, result


# --- the pre-imported parent (support/zygote.py) -------------------------------------------------


def run_python(python, code, env, args=(), timeout=240):
    """``subprocess.run([python, "-c", code, *args], env=env, capture_output=True, text=True, timeout=timeout)``.

    The same CompletedProcess (or TimeoutExpired), but forked from a zygote
    of that interpreter with torch, dynamo and inductor imported when
    ``forkable(code, env, python)`` says the scenario cannot tell the
    difference.  `env` is the child's whole environment.  run_py uses it; so do
    the real-sglang tests (with the sglang venv's interpreter).
    """
    cmd = [python, "-c", code, *args]
    proc = None
    t = time.monotonic()
    if forkable(code, env, python):
        proc = _zygote(python).run(cmd, code, env, list(args), timeout)
    how = "forked" if proc is not None else "fresh"
    if proc is None:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if os.environ.get("NPU_COMPAT_TEST_ZYGOTE_LOG"):  # which children were forked, and how long each took
        with open(os.environ["NPU_COMPAT_TEST_ZYGOTE_LOG"], "a") as f:
            f.write(f"{how} {time.monotonic() - t:.1f}s {os.environ.get('PYTEST_CURRENT_TEST', '?').split(' ')[0]}\n")
    return proc


# Before the code's first torch import, any of these means the scenario may
# see the difference between torch imported by the zygote and torch imported
# by the code itself: it gets a fresh interpreter.
_BEFORE_TORCH = ("npu_compat", "sglang", "sys.modules", "meta_path", "path_hooks", "__import__", "import_module",
                 "settrace", "setprofile", "thread", "Thread", "fork", "environ", "exec(", "builtins", "wrapt")
_TORCH_IMPORT = re.compile(r"^[ \t]*(import\s+([\w.]+\s*,\s*)*torch\b|from torch\b|from support import (\w+, )*fake_npu\b)", re.M)
# The only environment variables a forked child may set differently from the
# zygote: read by npu_compat, the stub NPU packages and sglang (none of them
# imported by the zygote) when they run.  Any other difference (TORCH*, CXX,
# TMPDIR, PYTHON*, ...: torch reads dozens at import) means a fresh interpreter.
_CHILD_VARS = ("NPU_COMPAT_", "NPU_STUB_", "SGLANG_")


def forkable(code, env, python=sys.executable):
    """May this ``python -c code`` scenario run in a child forked from the torch-imported zygote?

    Yes only if its code imports torch (or support.fake_npu, which does)
    before anything that could tell torch was imported earlier (npu_compat,
    sglang, sys.modules, import hooks, threads, the environment: see
    _BEFORE_TORCH); its environment differs from the zygote's only in
    PYTHONPATH and ``NPU_COMPAT_*``/``NPU_STUB_*``/``SGLANG_*`` (torch reads
    dozens of others at import); and no PYTHONPATH entry holds a sitecustomize,
    usercustomize, .pth, a distribution declaring ``torch.backends`` entry
    points (torch loads those at import) or a module the zygote has imported.
    """
    if os.environ.get("NPU_COMPAT_TEST_FRESH") == "1":
        return False
    m = _TORCH_IMPORT.search(code)
    if m is None or any(word in code[: m.end()] for word in _BEFORE_TORCH):
        return False
    if _zygote(python).top_level() is None:
        return False
    base = clean_env()
    for k in set(env) | set(base):
        if k != "PYTHONPATH" and not k.startswith(_CHILD_VARS) and env.get(k) != base.get(k):
            return False
    for d in filter(None, env.get("PYTHONPATH", "").split(os.pathsep)):
        if d in (TESTS,) or not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            stem = name[:-3] if name.endswith(".py") else name
            if (stem in ("sitecustomize", "usercustomize") or name.endswith(".pth") or _torch_backend(d, name)
                    or stem in _zygote(python).modules):
                return False
    return True


def _torch_backend(d, name):
    if not name.endswith((".dist-info", ".egg-info")):
        return False
    try:
        with open(os.path.join(d, name, "entry_points.txt")) as f:
            return "[torch.backends]" in f.read()
    except OSError:
        return False


class _Zygote:
    """One torch-imported parent per test process, started at first use (``support/zygote.py``)."""

    def __init__(self, python, preload=("torch", "torch._dynamo", "torch._inductor.compile_fx")):
        self.python = python
        self.preload = preload
        self.proc = None
        self.modules = frozenset()
        self.broken = False
        self.runs = 0
        self.lock = threading.Lock()
        self.dir = None

    def top_level(self):
        """Top-level names of the modules the zygote imported (a PYTHONPATH entry must not shadow one).

        None when the zygote cannot start (no torch in this venv: the no-torch legs): run fresh.
        """
        with self.lock:
            try:
                self._ensure()
            except RuntimeError:
                return None
            return self.modules

    def _ensure(self):
        if self.proc is not None and self.proc.poll() is None:
            return
        if self.broken:
            raise RuntimeError("the zygote did not start")
        self.dir = self.dir or tempfile.mkdtemp(prefix="npu-compat-zygote-")
        self.proc = subprocess.Popen(
            [self.python, os.path.join(TESTS, "support", "zygote.py"), *self.preload],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=clean_env(), text=True, cwd=ROOT,
        )
        ready = json.loads(self.proc.stdout.readline() or "{}")
        if "ready" not in ready:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
            self.broken = True  # once: every later scenario runs fresh
            raise RuntimeError("the zygote did not start")
        self.modules = frozenset(ready["top_level"])

    def _read(self, deadline=None):
        if deadline is not None:
            left = max(0.0, deadline - time.monotonic())
            if not select.select([self.proc.stdout], [], [], left)[0]:
                return None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the zygote died")
        return json.loads(line)

    def run(self, cmd, code, env, args, timeout):
        """A CompletedProcess like subprocess.run(cmd, capture_output=True, text=True) gives; None: run it fresh."""
        if not self.lock.acquire(blocking=False):  # another thread of this test is using it
            return None
        try:
            try:
                self._ensure()
            except RuntimeError:
                return None
            # files of their own: a grandchild left running must not write into the next scenario's output
            self.runs += 1
            out, err = (os.path.join(self.dir, f"{self.runs}.{name}") for name in ("stdout", "stderr"))
            pid = None
            try:
                self.proc.stdin.write(json.dumps({"code": code, "env": env, "args": args, "cwd": os.getcwd(),
                                                  "stdout": out, "stderr": err}) + "\n")
                self.proc.stdin.flush()
                started = self._read()
                if "pid" not in started:
                    return None
                pid = started["pid"]
                answer = self._read(time.monotonic() + timeout)
                if answer is None:  # as subprocess.run does on a timeout: kill the child, raise
                    os.kill(pid, signal.SIGKILL)
                    self._read()
                    raise subprocess.TimeoutExpired(cmd, timeout, output=_text(out), stderr=_text(err))
                done = subprocess.CompletedProcess(cmd, answer["status"], _text(out), _text(err))
                for path in (out, err):
                    os.unlink(path)
                return done
            except subprocess.TimeoutExpired:
                raise
            except BaseException:  # interrupted (pytest-timeout, Ctrl-C) mid-scenario: end the child and the zygote
                if pid is not None:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                self.proc.kill()
                self.proc.wait()
                self.proc = None
                raise
        finally:
            self.lock.release()

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)


def _text(path):
    # What subprocess.run(text=True) makes of the bytes: the locale's encoding, universal newlines.
    with open(path, encoding=locale.getpreferredencoding(False), newline=None) as f:
        return f.read()


_ZYGOTES = {}


def _zygote(python):
    """The zygote of that interpreter, for this test process (started at first use, ended at exit)."""
    key = os.path.abspath(python)
    if key not in _ZYGOTES:
        _ZYGOTES[key] = _Zygote(python)
        atexit.register(_ZYGOTES[key].close)
    return _ZYGOTES[key]


@pytest.fixture
def tree(tmp_path):
    """tree(variant) -> path of a fixture sglang tree of that upstream state."""

    def make(variant):
        if variant == "light":
            return build_light(tmp_path / "tree-light")
        return build(tmp_path / f"tree-{variant}", variant)

    return make


# Reliability figures: tests record how many cases each property ran; the
# summary at the end of the run prints them (the README quotes these lines).
FIGURES = {}


def record_cases(prop, n):
    FIGURES[prop] = FIGURES.get(prop, 0) + n


def pytest_sessionfinish(session):
    if hasattr(session.config, "workeroutput"):  # an xdist worker: hand the figures over
        session.config.workeroutput["figures"] = json.dumps(FIGURES)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    for prop, n in json.loads(getattr(node, "workeroutput", {}).get("figures", "{}")).items():
        record_cases(prop, n)


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("reliability figures (cases run per property)")
        for prop, n in sorted(FIGURES.items()):
            terminalreporter.write_line(f"{prop}: {n} cases")
