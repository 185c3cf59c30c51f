import json
import os
import subprocess
import sys
import textwrap

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
    """Run `code` in a fresh interpreter; return (completed process, RESULT dict or None).

    The child sees the fixture `tree` and tests/ on PYTHONPATH; it reports by
    printing ``RESULT:<json>`` (support.report does that).
    """
    env = clean_env(**(env or {}))
    path = [p for p in (tree, TESTS) if p]
    if env.get("PYTHONPATH"):
        path.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(path)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT):
            result = json.loads(line[len(RESULT) :])
    if check and result is None:
        raise AssertionError(f"child reported nothing (rc={proc.returncode})\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc, result


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
