"""``npu-compat scan --diff OLD NEW``: trees and saved reports, matched by module and qualified name."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from npu_compat.scan import GUARDED, NPU_BACKEND, UNGUARDED, Diff, Report, scan

REPO = Path(__file__).resolve().parent.parent
UPGRADE = Path(__file__).resolve().parent / "scan_fixtures" / "upgrade"
OLD, NEW = UPGRADE / "old", UPGRADE / "new"


def cli(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "npu_compat", "scan", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=120)


def brief(sites):
    return sorted((s.module, s.target, s.verdict) for s in sites)


def test_diff_of_two_trees():
    d = Diff(scan([OLD], patches=()), scan([NEW], patches=()))
    assert brief(d.added) == [("pkg.a", "added", UNGUARDED), ("pkg.b", "on_torchair", NPU_BACKEND)]
    assert brief(d.removed) == [("pkg.a", "removed", UNGUARDED)]
    assert [(o.target, o.verdict, n.verdict, o.line, n.line) for o, n in d.changed] == [
        ("fixed", UNGUARDED, GUARDED, 13, 14),
    ]
    # `stays` and M.build's site moved lines but did not change: not listed
    assert d.summary()["old"][UNGUARDED] == 4 and d.summary()["new"][GUARDED] == 1
    assert [s.target for s in d.failing("unguarded")] == ["added"]
    assert sorted(s.target for s in d.failing("npu-backend")) == ["added", "on_torchair"]
    assert d.exit_code("never") == 0


def test_diff_of_saved_reports_equals_diff_of_trees(tmp_path):
    for side in (OLD, NEW):
        res = cli(side, "--json")
        assert res.returncode == 0, res.stderr
        (tmp_path / f"{side.name}.json").write_text(res.stdout)
    from_trees = cli("--diff", OLD, NEW, "--json")
    from_reports = cli("--diff", tmp_path / "old.json", tmp_path / "new.json", "--json")
    mixed = cli("--diff", tmp_path / "old.json", NEW, "--json")
    a, b, c = (json.loads(r.stdout) for r in (from_trees, from_reports, mixed))
    for data in (b, c):
        for key in ("added", "removed", "changed"):
            assert data[key] == a[key]
    assert a["summary"]["added"] == 2 and a["summary"]["removed"] == 1 and a["summary"]["changed"] == 1
    assert a["changed"][0]["old"]["verdict"] == UNGUARDED and a["changed"][0]["new"]["verdict"] == GUARDED


def test_diff_table_and_fail_on():
    res = cli("--diff", OLD, NEW)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "npu-compat scan --diff: 2 added, 1 removed, 1 verdict changed"
    assert max(map(len, lines)) <= 80
    assert "added (2):" in lines and "removed (1):" in lines and "verdict changed (1):" in lines
    row = [line for line in lines if " fixed " in line][0]
    assert "unguarded -> guarded" in row and "pkg.a:14" in row
    assert cli("--diff", OLD, NEW, "--fail-on", "unguarded").returncode == 1  # `added` is new and unguarded
    assert cli("--diff", NEW, NEW, "--fail-on", "unknown").returncode == 0  # nothing new, though NEW has unguarded
    # the upgrade in reverse only removes and un-fixes: `fixed` becomes unguarded again
    assert cli("--diff", NEW, OLD, "--fail-on", "unguarded").returncode == 1
    assert cli("--diff", NEW, OLD, "--fail-on", "never").returncode == 0


def test_report_of_the_first_scanner_loads():
    old_format = {"summary": {"files_scanned": 3}, "sites": [{
        "path": "sglang/x.py", "module": "sglang.x", "line": 3, "col": 0, "api": "torch.compile",
        "form": "decorator", "target": "f", "scope": "<module>", "backend": None, "disable": None,
        "verdict": "unguarded", "reason": "no disable=", "covered_by": "p",
    }], "errors": []}
    rep = Report.from_dict(old_format)
    assert rep.files_read == 3 and rep.sites[0].exempt and rep.failing("unguarded") == []


@pytest.mark.parametrize("content", ["not json", "[1, 2]", '{"sites": [{"verdict": "maybe"}]}'])
def test_bad_report_is_one_line(tmp_path, content):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    res = cli("--diff", bad, NEW)
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert res.stderr.startswith(f"npu-compat scan: error: {bad}: not a report saved with `npu-compat scan --json`")


def test_diff_missing_side():
    res = cli("--diff", OLD, UPGRADE / "nope")
    assert res.returncode == 2 and res.stderr.startswith("npu-compat scan: error: no such file or directory")
