"""NPU_COMPAT_SPEED=check|pick: each compiled sglang site measured against eager, on the simulated NPU.

``slow`` is a backend whose compiled graph sleeps 3 ms before running the
graph: the compiled variant is slower than eager by far more than any load
on this machine can blur, so which variant wins is certain while the
measurement itself is real (wall time, alternating calls).  One test runs
inductor for real on two shapes of work: a small gather (slower compiled
on a CPU) and an elementwise chain over 4M floats (faster compiled).
"""


import pytest
from conftest import run_py
from fixtures import layers_tree

SITES = '''
import time
import torch

RUNS = {"compiled": 0}


def slow(gm, example_inputs):
    def run(*args):
        RUNS["compiled"] += 1
        time.sleep(0.003)
        return gm.forward(*args)

    return run


@torch.compile(backend=slow, dynamic=True)
def gather(buf, idx):
    return buf[idx] * 2


@torch.compile(dynamic=True)
def small(p, t, i):                 # inductor: three gathers, little work
    return p[i], t[i], p[i].sum()


@torch.compile(dynamic=True)
def chain(x):                       # inductor: one fused kernel instead of eight passes
    return ((((x * 2 + 1).sin() * 3 - 2).cos() + 4).exp().clamp(max=10) - 1).abs()
'''

HEAD = """
from support import fake_npu, npu_stubs
npu = fake_npu.install(); npu_stubs.install()
import torch; torch.accelerator.is_available = lambda: False
CAPTURING = [False]
npu.is_current_stream_capturing = lambda: CAPTURING[0]
import npu_compat
from npu_compat import core, speed
from support import report
import torch._dynamo.utils as du
import sglang.srt.layers.sites as sites

def entry(name):
    for c in core.compiles():
        if c["site"].endswith(":" + name):
            return c

def frames():
    return sum(du.counters["frames"].values())
"""


# The plugin route: sglang's module (and its compiled site) loaded first, then the plugin.
LATE = HEAD.replace(
    "import npu_compat\nfrom npu_compat import core, speed\n",
    "import sglang.srt.layers.sites\nfrom npu_compat import plugin\nplugin.load()\nimport npu_compat\n"
    "from npu_compat import core, speed\n",
)
assert LATE != HEAD


def make_tree(tmp_path):
    return layers_tree(tmp_path / "tree", {"sites": SITES})


GATHER = """
buf, idx = torch.arange(100.), torch.tensor([3, 5, 7])
want = (buf[idx] * 2).tolist()
def calls(n):
    return all(sites.gather(buf, idx).tolist() == want for _ in range(n))
"""


@pytest.mark.parametrize("mode, route", [("pick", "import"), ("check", "import"), ("", "import"), ("pick", "plugin")])
def test_a_site_slower_compiled_is_measured_and_under_pick_runs_eagerly(tmp_path, mode, route):
    head = HEAD if route == "import" else LATE  # plugin: the site was compiled before npu_compat watched
    _, r = run_py(
        head + GATHER + """
ok = calls(100)                         # measured: alternating compiled and eager
measured = sites.RUNS["compiled"]
f0 = frames()
ok = calls(50) and ok                   # after the measurement
after = sites.RUNS["compiled"] - measured
CAPTURING[0] = True
before_capture = sites.RUNS["compiled"]
ok = calls(10) and ok                   # under graph capture: as sglang made it
captured = sites.RUNS["compiled"] - before_capture
CAPTURING[0] = False
report.emit(ok=ok, measured=measured, after=after, captured=captured, frames=frames() - f0,
            speed=entry("gather")["speed"], fell_back=entry("gather")["fell_back"], route=npu_compat.route())
""",
        tree=make_tree(tmp_path),
        env={"NPU_COMPAT_SPEED": mode} if mode else None,
    )
    assert r["ok"] is True and r["fell_back"] is None and r["frames"] == 0 and r["route"] == route
    assert r["captured"] == 10  # capture: always the compiled graph, never timed
    if not mode:  # nothing is measured: every call compiled
        assert r["speed"] is None and r["measured"] == 100 and r["after"] == 50
        return
    s = r["speed"]
    assert s["faster"] == "eager" and s["samples"] >= 20 and s["timer"] == "wall"
    assert s["compiled_us"] > 3000 > s["eager_us"] and s["regime"] == "outside graph capture"
    assert s["spread"]["eager"][1] < s["spread"]["compiled"][0]
    # each call ran exactly one variant: the compiled one on every other timed call only
    if mode == "pick":
        assert s["samples"] <= r["measured"] <= 52, r
        assert s["picked"] == "eager" and r["after"] == 0  # the rest of the process runs eagerly
    else:  # check only: the site stays compiled once measured
        assert s["picked"] is None and r["after"] == 50 and s["samples"] <= 100 - r["measured"] <= 52, r


def test_a_site_picked_eager_outside_capture_stays_compiled_under_capture(tmp_path):
    _, r = run_py(
        HEAD + GATHER + """
CAPTURING[0] = True
ok = calls(60)                          # all under capture: nothing timed, all compiled
under = sites.RUNS["compiled"]
speed_under = entry("gather")["speed"]
CAPTURING[0] = False
ok = calls(100) and ok                  # measured outside capture, picked eager
CAPTURING[0] = True
c0 = sites.RUNS["compiled"]
ok = calls(5) and ok
report.emit(ok=ok, under=under, speed_under=speed_under, captured=sites.RUNS["compiled"] - c0,
            picked=entry("gather")["speed"]["picked"])
""",
        tree=make_tree(tmp_path),
        env={"NPU_COMPAT_SPEED": "pick"},
    )
    assert r["ok"] and r["under"] == 60 and r["speed_under"] is None
    assert r["picked"] == "eager" and r["captured"] == 5


def test_inductor_a_small_gather_and_a_large_chain(tmp_path):
    _, r = run_py(
        HEAD + """
g = torch.Generator().manual_seed(0)
p, t = torch.rand(4096, 8, generator=g), torch.randint(0, 9, (4096, 8), generator=g)
i = torch.randint(0, 4096, (64,), generator=g)
x = torch.rand(1 << 22, generator=g)
eager_small = sites.small.__wrapped__(p, t, i)
eager_chain = sites.chain.__wrapped__(x)
same = True
for _ in range(400):
    out = sites.small(p, t, i)
    same = same and all(torch.allclose(a, b) for a, b in zip(out, eager_small))
    if entry("small")["speed"] is not None:
        break
for _ in range(120):
    same = same and torch.allclose(sites.chain(x), eager_chain, rtol=1e-5, atol=1e-6)
    if entry("chain")["speed"] is not None:
        break
f0 = frames()
sites.small(p, t, i); sites.chain(x)
report.emit(same=same, small=entry("small")["speed"], chain=entry("chain")["speed"], frames=frames() - f0)
""",
        tree=make_tree(tmp_path),
        env={"NPU_COMPAT_SPEED": "pick"},
        timeout=600,
    )
    assert r["same"] is True and r["frames"] == 0
    assert r["small"]["faster"] == "eager" and r["small"]["picked"] == "eager", r["small"]
    assert r["chain"]["picked"] == "compiled" and r["chain"]["compiled_us"] < r["chain"]["eager_us"], r["chain"]


def test_a_bad_value_warns_once_and_measures_nothing(tmp_path):
    proc, r = run_py(
        HEAD + GATHER + """
ok = calls(60)
report.emit(ok=ok, speed=entry("gather")["speed"], runs=sites.RUNS["compiled"], mode=speed.MODE[0])
""",
        tree=make_tree(tmp_path),
        env={"NPU_COMPAT_SPEED": "fast"},
    )
    assert r["ok"] and r["speed"] is None and r["runs"] == 60 and r["mode"] is None
    assert proc.stderr.count("NPU_COMPAT_SPEED='fast' not understood") == 1


def test_the_loop_from_a_measured_slowdown_to_the_eager_list_and_the_upstream_patch(tmp_path):
    """report line -> `npu-compat audit` (a speed line, --json) -> --eager-list -> scan --patch --pr-text."""
    import json
    import os
    import subprocess
    import sys

    report_path = tmp_path / "report.jsonl"
    tree = make_tree(tmp_path)
    _, r = run_py(
        HEAD + GATHER + """
ok = calls(100)
report.emit(ok=ok, speed=entry("gather")["speed"], status=npu_compat.report()["compiles"] == core.compiles())
""",
        tree=tree,
        env={"NPU_COMPAT_SPEED": "check", "NPU_COMPAT_REPORT": str(report_path)},
    )
    assert r["ok"] and r["speed"]["faster"] == "eager" and r["status"] is True
    cli = [sys.executable, "-m", "npu_compat"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NPU_COMPAT")}
    env["COLUMNS"] = "80"

    def run(*args):
        return subprocess.run(cli + list(args), capture_output=True, text=True, env=env, timeout=120)

    table = run("audit", str(report_path))
    assert table.returncode == 0, table.stderr
    line = next(ln for ln in table.stdout.splitlines() if "speed:" in ln)
    assert "compiled" in line and "eager" in line and "1 process" in line
    assert all(len(ln) <= 80 for ln in table.stdout.splitlines())
    data = json.loads(run("audit", "--json", str(report_path)).stdout)
    (site,) = [s for s in data["sites"] if s["site"].endswith(":gather")]
    assert site["speed"]["ratio"] > 1.1 and site["speed"]["processes"] == 1 and site["fell_back"] == 0
    pins = run("audit", "--eager-list", str(report_path)).stdout.splitlines()
    assert "sglang.srt.layers.sites:gather" in pins
    assert any(p.startswith("# measured slower compiled") for p in pins)
    assert "sglang.srt.layers.sites:gather" not in run("audit", "--eager-list", "--slower", "0", str(report_path)).stdout
    patch = run("scan", "--patch", tree, "--from-audit", str(report_path), "--pr-text")
    assert patch.returncode == 0, patch.stderr
    assert "disable=_is_npu" in patch.stdout and "slower compiled than eager on NPU" in patch.stdout
