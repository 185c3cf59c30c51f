"""scripts/bench.py keeps working: --quick runs and produces every figure (values are not asserted)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.timeout(600)  # every section once, torch imported several times: minutes on a loaded 2-core machine
def test_bench_quick_produces_every_figure(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "bench.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=560,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    startup = r["startup"]
    for name in ("bare: python -c pass", "python -c 'import npu_compat'", "python -c pass, bootstrap on PYTHONPATH"):
        assert startup[name]["n"] > 0 and startup[name]["median_ms"] > 0 and "ratio" in startup[name]
    assert any(k.startswith("anchor: python -c 'import wrapt'") for k in startup)
    status = r["status"]
    for name in ("npu-compat status --no-import", "npu-compat status", "python -c 'import torch'"):
        assert status[name]["median_ms"] > 0 and "ratio_to_torch" in status[name]
    torch_fig = r["torch"]
    assert torch_fig["finder calls during import torch"]["calls"] > 100  # the finder saw torch's imports
    assert all(v.get("ratio", 0) > 0 for v in torch_fig.values())
    assert r["patch"]["first application, at the target's import (one per process)"]["median_ms"] > 0
    assert r["patch"]["re-application on an imported module"]["n"] > 0
    calls = r["call"]
    assert len(calls) == 12  # 3 helpers/variants x batch 1, 8, 64, 256
    assert all(v["installed_us"] > 0 and v["plain_us"] > 0 and v["calls_each"] > 0 for v in calls.values())


def test_a_figure_that_cannot_run_says_why_and_exits_1(tmp_path):
    env = dict(os.environ, NPU_COMPAT_SGLANG_TREE=str(tmp_path / "no-such-tree"))
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "bench.py"), "--only", "scan", "--json", str(tmp_path / "b.json")],
        capture_output=True, text=True, timeout=120, env=env, cwd=str(tmp_path),
    )
    assert proc.returncode == 1
    assert f"bench.py: scan: cannot run: no sglang 0.5.23 tree at {tmp_path / 'no-such-tree'}" in proc.stderr
    assert "NPU_COMPAT_SGLANG_TREE" in proc.stderr
