"""The fallback falls back at the frame or graph that failed, and never changes a result.

The nine cases of an outside review of 0.2.0, each of which made the old
whole-call rerun run code twice, draw random numbers twice, blame the NPU
for the program's own error, or break torch's own APIs.  Each runs on the
simulated NPU (dynamo made able to trace) over a small sglang-shaped tree
whose backend ``flaky`` fails on demand:

* ``FAIL["compile"]``: the backend call raises (a graph that cannot be built);
* ``FAIL["first_run"]``: the compiled graph raises on its first run;
* ``FAIL["after_run"]``: the compiled graph runs (every effect of it lands),
  then raises, as a device error reported after the kernels ran would.

Many checks share one child process (each on its own site, so one site's
fallback does not touch another's).
"""

import textwrap

import pytest
from conftest import run_py
from fixtures import layers_tree

CASES = '''
import torch
import torch.nn.functional as F

FAIL = {"compile": False, "first_run": False, "after_run": False}
RUNS = [0]  # compiled graph runs


class CompileFailed(RuntimeError):
    pass


def flaky(gm, example_inputs):
    if FAIL["compile"]:
        raise CompileFailed("graph build failed: op not supported")
    ran = []

    def run(*args):
        RUNS[0] += 1
        if FAIL["first_run"] and not ran:
            ran.append(1)
            raise CompileFailed("graph failed on its first run")
        out = gm.forward(*args)
        if FAIL["after_run"] and not ran:
            ran.append(1)
            raise CompileFailed("graph failed after it ran")
        ran.append(1)
        return out

    return run


@torch.compile(backend=flaky, dynamic=False)
def bump(x, counter):               # case 1: an in-place bump, a graph break, more work
    counter.add_(1)
    torch._dynamo.graph_break()
    return x * 2


@torch.compile(backend=flaky, dynamic=True)
def iadd(x, y):                     # case 2: x += y is operator.iadd in dynamo's graph
    x += y
    return x * 1


@torch.compile(backend=flaky, dynamic=True)
def relu_inplace(x):                # case 2: F.relu(..., inplace=True)
    F.relu(x, inplace=True)
    return x + 0


class Scale(torch.nn.Module):
    def forward(self, x):
        torch._dynamo.graph_break()
        return x * 3


class Block(torch.nn.Module):       # case 3: a callee with the site's own name and file
    def __init__(self):
        super().__init__()
        self.scale = Scale()
        self.calls = torch.zeros(1)

    def forward(self, x):
        self.calls.add_(1)
        return self.scale(x) + 1


@torch.compile(backend=flaky, dynamic=True)
def noisy(x):                       # case 4: random numbers in the graph
    return x + torch.rand_like(x)


@torch.compile(backend=flaky, dynamic=True)
def steady(x):                      # case 5: runs in another thread meanwhile
    return x - 1


@torch.compile(backend=flaky, dynamic=True)
def broken(x):                      # case 5: its compile fails
    return x + 5


@torch.compile(backend=flaky, dynamic=True)
def assert_and_invalidate(values, buf, idx):   # case 6: the upstream helper's pattern
    torch._assert_async((values >= 0).all())
    buf[idx] = -1


@torch.compile(backend=flaky, dynamic=True)
def pick(buf, idx):                 # case 6: an out-of-range index, in a graph that writes
    out = buf[idx]
    buf[idx] = -1
    return out


@torch.compile(backend=flaky, dynamic=False)
def shaped(x):                      # case 7: recompiles on a new shape
    return x * 7


@torch.compile(backend=flaky, dynamic=True)
def api(x):                         # case 8: torch's own APIs on a compiled site
    return x * 4


@torch.compile(backend=flaky, dynamic=True)
def holds(x):                       # case 9: its compile fails; x must not outlive the call
    return x * 6
'''

NPU = """
from support import fake_npu, npu_stubs
fake_npu.install(); npu_stubs.install()
import torch; torch.accelerator.is_available = lambda: False
"""

HELPERS = """
import gc, threading, weakref
import torch, npu_compat
from npu_compat import core, fallback
from support import report
import torch._dynamo.utils as du

def entry(name):
    for c in core.compiles():
        if c["site"].endswith(":" + name):
            return c

def fell(name):
    e = entry(name)
    return e and e["fell_back"]

def attempt(fn, *args):
    try:
        out = fn(*args)
        return {"ok": out.tolist() if out is not None else None}
    except Exception as exc:
        return {"raised": type(exc).__name__}

def frames():
    return sum(du.counters["frames"].values())
"""

ACTIVATE = {
    "import": ("import npu_compat\n", "import sglang.srt.layers.cases as cases\n"),
    "plugin": ("", "import sglang.srt.layers.cases as cases\nfrom npu_compat import plugin\nplugin.load()\n"),
}


def make_tree(tmp_path):
    return layers_tree(tmp_path / "tree", {"cases": CASES})


def run_cases(tmp_path, route, body, env=None):
    first, then = ACTIVATE[route]
    proc, r = run_py(NPU + first + HELPERS + then + textwrap.dedent(body), tree=make_tree(tmp_path), env=env)
    return proc, r


@pytest.mark.parametrize("route", ["import", "plugin"])
def test_nothing_of_the_program_runs_twice(tmp_path, route):
    _, r = run_cases(
        tmp_path,
        route,
        """
        F = cases.FAIL
        out = {}
        # 1. a frame resumed after a graph break recompiles (a new shape) and that compile fails:
        #    only that frame runs eagerly; the bump before the break lands once per call.
        counter = torch.zeros(1)
        a = attempt(cases.bump, torch.ones(2), counter)
        F["compile"] = True
        b = attempt(cases.bump, torch.ones(3), counter)
        F["compile"] = False
        runs = cases.RUNS[0]
        c = attempt(cases.bump, torch.ones(2), counter)   # its graphs compiled for this shape run eagerly now
        out["case1"] = dict(a=a, b=b, c=c, counter=counter.tolist(), fell=fell("bump"), runs=cases.RUNS[0] - runs)

        # 2. x += y and F.relu(inplace=True) in a graph that fails after it ran: put back, run once.
        F["after_run"] = True
        x, y = torch.ones(3), torch.full((3,), 2.0)
        out["iadd"] = dict(r=attempt(cases.iadd, x, y), x=x.tolist(), fell=fell("iadd"))
        z = torch.tensor([-1.0, 2.0, -3.0])
        out["relu"] = dict(r=attempt(cases.relu_inplace, z), z=z.tolist(), fell=fell("relu_inplace"))

        # 3. Block.forward calls Scale.forward (same name, same file), whose graph fails after running.
        block = cases.Block()
        site = torch.compile(block.forward, backend=cases.flaky)
        out["callee"] = dict(r=attempt(site, torch.ones(2)), calls=block.calls.tolist())

        # 4. random numbers: the graph drew them, failed, and is run again from the same state.
        torch.manual_seed(0)
        got = attempt(cases.noisy, torch.zeros(4))
        after = torch.rand(2).tolist()
        F["after_run"] = False
        torch.manual_seed(0)
        want = (torch.zeros(4) + torch.rand_like(torch.zeros(4))).tolist()
        want_after = torch.rand(2).tolist()
        out["random"] = dict(got=got, want=want, after=after, want_after=want_after, fell=fell("noisy"))
        report.emit(**out)
        """,
    )
    c1 = r["case1"]
    assert c1["a"] == {"ok": [2.0, 2.0]} and c1["b"] == {"ok": [2.0, 2.0, 2.0]}
    assert c1["c"] == {"ok": [2.0, 2.0]} and c1["runs"] == 0, c1  # after the fallback: no compiled graph runs
    assert c1["counter"] == [3.0], c1  # three calls, three bumps (the old rerun made the second one count twice)
    assert c1["fell"]["stage"] == "compile" and c1["fell"]["type"] == "CompileFailed"
    assert r["iadd"]["r"] == {"ok": [3.0, 3.0, 3.0]} and r["iadd"]["x"] == [3.0, 3.0, 3.0]
    assert r["iadd"]["fell"]["stage"] == "first run"
    assert r["relu"]["r"] == {"ok": [0.0, 2.0, 0.0]} and r["relu"]["z"] == [0.0, 2.0, 0.0]
    assert r["callee"] == {"r": {"ok": [4.0, 4.0]}, "calls": [1.0]}
    rnd = r["random"]
    assert rnd["got"] == {"ok": rnd["want"]} and rnd["after"] == rnd["want_after"]
    assert rnd["fell"]["stage"] == "first run"


def test_the_npu_is_blamed_only_with_evidence(tmp_path):
    _, r = run_cases(
        tmp_path,
        "import",
        """
        F = cases.FAIL
        out = {}
        # 5. another thread runs a compiled helper the whole time; a compile fails here: served.
        cases.steady(torch.ones(2))
        go, stop, ran = threading.Event(), threading.Event(), []
        def loop():
            while not stop.is_set():
                cases.steady(torch.ones(2)); ran.append(1); go.set()
        t = threading.Thread(target=loop); t.start(); go.wait(60)
        F["compile"] = True
        out["thread"] = dict(r=attempt(cases.broken, torch.ones(2)), fell=fell("broken"))
        F["compile"] = False
        stop.set(); t.join(60)

        # 6. the program's own errors in graphs that write their inputs: raised, nothing blamed.
        buf = torch.arange(6.)
        bad = attempt(cases.assert_and_invalidate, torch.tensor([1.0, -1.0]), buf, torch.tensor([2]))
        good = attempt(cases.assert_and_invalidate, torch.tensor([1.0, 2.0]), buf, torch.tensor([2]))
        out["assert"] = dict(bad=bad, good=good, buf=buf.tolist(), fell=fell("assert_and_invalidate"))
        b2 = torch.arange(4.)
        bad = attempt(cases.pick, b2, torch.tensor([9]))
        good = attempt(cases.pick, b2, torch.tensor([1]))
        out["index"] = dict(bad=bad, good=good, buf=b2.tolist(), fell=fell("pick"))

        # 7. errors the user asked dynamo for pass through untouched.
        cases.shaped(torch.ones(2))
        torch._dynamo.config.error_on_recompile = True
        rec = attempt(cases.shaped, torch.ones(5))
        torch._dynamo.config.error_on_recompile = False
        with torch.compiler.set_stance("fail_on_recompile"):
            stance = attempt(cases.shaped, torch.ones(6))
        out["asked"] = dict(rec=rec, stance=stance, fell=fell("shaped"), later=attempt(cases.shaped, torch.ones(5)))
        out["fell_back"] = [d["site"] for d in core.fell_back()]
        report.emit(**out)
        """,
    )
    assert r["thread"]["r"] == {"ok": [6.0, 6.0]} and r["thread"]["fell"]["type"] == "CompileFailed"
    a = r["assert"]
    assert a["bad"]["raised"] == "RuntimeError" and a["good"] == {"ok": None} and a["fell"] is None
    assert a["buf"] == [0.0, 1.0, -1.0, 3.0, 4.0, 5.0]
    i = r["index"]
    assert i["bad"]["raised"] in ("IndexError", "RuntimeError") and i["fell"] is None
    assert i["good"] == {"ok": [1.0]} and i["buf"] == [0.0, -1.0, 2.0, 3.0]
    asked = r["asked"]
    assert asked["rec"]["raised"] == "RecompileError" and asked["stance"]["raised"] == "RuntimeError"
    assert asked["fell"] is None and asked["later"] == {"ok": [7.0] * 5}
    assert r["fell_back"] == ["sglang.srt.layers.cases:broken"]


@pytest.mark.parametrize("route", ["import", "plugin"])
def test_a_compiled_site_answers_torchs_apis_and_keeps_nothing(tmp_path, route):
    _, r = run_cases(
        tmp_path,
        route,
        """
        out = {}
        # 8. torch's own APIs on a compiled sglang site.
        site = cases.api
        out["compiled"] = attempt(site, torch.ones(2))
        f0 = frames()
        off = torch.compiler.disable(site)
        out["disabled"] = dict(r=attempt(off, torch.ones(3)), frames=frames() - f0)
        out["recompiled"] = attempt(torch.compile(site, backend="eager"), torch.ones(2))
        out["run_only"] = attempt(torch._dynamo.run(site), torch.ones(2))
        torch._dynamo.reset()
        f0 = frames()
        out["after_reset"] = dict(r=attempt(site, torch.ones(2)), frames=frames() - f0)

        # 9. a failed compile keeps no input alive, whatever suppress_errors says.
        cases.FAIL["compile"] = True
        x = torch.ones(1000)
        ref = weakref.ref(x)
        out["held"] = attempt(cases.holds, x)
        del x
        gc.collect()
        out["alive"] = ref() is not None
        cases.FAIL["compile"] = False
        report.emit(**out)
        """,
        env={"TORCHDYNAMO_SUPPRESS_ERRORS": "1"},
    )
    assert r["compiled"] == {"ok": [4.0, 4.0]}
    assert r["disabled"] == {"r": {"ok": [4.0] * 3}, "frames": 0}
    assert r["recompiled"] == {"ok": [4.0, 4.0]} and r["run_only"] == {"ok": [4.0, 4.0]}
    assert r["after_reset"]["r"] == {"ok": [4.0, 4.0]} and r["after_reset"]["frames"] > 0
    assert r["held"] == {"ok": [6.0] * 1000} and r["alive"] is False
