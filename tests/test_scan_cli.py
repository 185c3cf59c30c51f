"""``npu-compat scan`` as a user meets it (issue 18): 80 columns, progress on a terminal only,
Ctrl-C, paths with nothing to scan, test/benchmark sites apart, backend="eager", coverage
by default and opt-in apart, wording."""

import glob
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest

from conftest import ROOT, clean_env

from npu_compat.scan import UNGUARDED, scan
from npu_compat.scan.render import report_table

FIXTURES = Path(ROOT) / "tests" / "scan_fixtures"
WIDTH = 80


def run_scan(*argv, timeout=300, **kw):
    env = clean_env(PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "npu_compat", "scan", *map(str, argv)], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT, **kw)


def too_wide(text):
    """Lines over 80 columns, except one-word lines (a path or name with no '/' or '.' to cut at)."""
    return [line for line in text.splitlines() if len(line) > WIDTH and len(line.split()) > 1]


def _tree_0_5_23():
    py = os.environ.get("NPU_COMPAT_SGLANG_PYTHON")
    if not py:
        pytest.skip("NPU_COMPAT_SGLANG_PYTHON is not set (the venv with the sglang 0.5.23 tree)")
    found = glob.glob(os.path.join(os.path.dirname(os.path.dirname(py)), "sglang-0.5.23", "sglang"))
    if not found:
        pytest.fail("no sglang-0.5.23/sglang beside the venv of NPU_COMPAT_SGLANG_PYTHON")
    return found[0]


# ---- 80 columns ----

@pytest.mark.parametrize("fixture", sorted(p.name for p in FIXTURES.iterdir() if p.is_dir()))
def test_table_fits_80_columns_on_the_fixtures(fixture):
    res = run_scan(FIXTURES / fixture)
    assert res.returncode == 0, res.stderr
    assert not too_wide(res.stdout), too_wide(res.stdout)


def test_table_fits_80_columns_on_sglang_0_5_23():
    tree = _tree_0_5_23()
    res = run_scan(tree)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert not too_wide(res.stdout), too_wide(res.stdout)
    assert max(map(len, lines)) <= WIDTH  # here nothing even needs the exception
    assert f"  paths below {tree}/" in lines
    assert "srt/managers/overlap_utils.py  [sglang.srt.managers.overlap_utils]" in lines
    # sglang's own test/ and benchmark/ directories apart from the serving code
    text = " ".join(res.stdout.split())
    assert "in serving code: 86 (" in text and "under test/ and benchmark/ directories: 9 (" in text
    assert 'backend="eager" (no code generated): 4 of the 60 unguarded' in text
    skipped = json.loads(run_scan(tree, "--json", "--skip-tests").stdout)
    assert skipped["summary"]["sites"] == 86 and skipped["summary"]["sites_in_tests"] == 0


def test_diff_fits_80_columns():
    res = run_scan("--diff", FIXTURES / "upgrade" / "old", FIXTURES / "upgrade" / "new")
    assert res.returncode == 0 and not too_wide(res.stdout), too_wide(res.stdout)


# ---- progress and Ctrl-C ----

def test_progress_only_on_a_terminal(tmp_path):
    import pty

    (tmp_path / "a.py").write_text("import torch\n\nf = torch.compile(g)\n")
    plain = run_scan(tmp_path)
    assert plain.returncode == 0 and plain.stderr == ""  # not a terminal: nothing
    master, slave = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "npu_compat", "scan", str(tmp_path)], env=clean_env(PYTHONPATH=ROOT),
                              stdout=subprocess.PIPE, stderr=slave, cwd=ROOT, timeout=120)
        os.close(slave)
        slave = None
        seen = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        if slave is not None:
            os.close(slave)
        os.close(master)
    assert proc.returncode == 0
    assert b"npu-compat scan: read 1/1 files" in seen and b"parsed 1/1 files" in seen
    assert seen.endswith(b"\r\x1b[K")  # the line is cleared before the table is printed
    assert b"\r" not in proc.stdout


def _big_tree(root, files=3000):
    body = textwrap.dedent(
        """\
        import torch

        @torch.compile
        def f{i}(x):
            return x + {i}
        """
    ) + "".join(f"\ndef g{j}(a, b):\n    return [a * b + {j} for _ in range(3)]\n" for j in range(150))
    for d in range(files // 100):
        sub = root / f"pkg{d}"
        sub.mkdir()
        for i in range(100):
            (sub / f"m{i}.py").write_text(body.format(i=i))


def test_sigint_exits_130_at_once_without_a_traceback(tmp_path):
    _big_tree(tmp_path)
    go = (
        "import atexit, sys; from npu_compat.cli import entry\n"
        "atexit.register(lambda: sys.stderr.write('finalizing\\n'))\n"
        "sys.stderr.write('go\\n'); sys.stderr.flush(); entry()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", go, "scan", "--parse-all", str(tmp_path)],
        env=clean_env(PYTHONPATH=ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
    )
    try:
        assert proc.stderr.readline() == b"go\n"
        time.sleep(1.0)  # well into the scan of 3000 files (that takes tens of seconds)
        assert proc.poll() is None, "the scan ended before the signal"
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert b"Traceback" not in err and out == b""
    assert took < 20, took  # generous: seconds of freeing at exit were the bug, not a busy machine
    # "at once" checked without a clock: the process ends without the interpreter's
    # finalization (atexit, then freeing every object the scan made), which took the seconds
    assert b"finalizing" not in err


def test_interrupt_in_process_returns_130(monkeypatch, tmp_path):
    from npu_compat.scan import cli as scan_cli

    (tmp_path / "a.py").write_text("x = 1\n")

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(scan_cli, "scan", interrupted)
    assert scan_cli.main([str(tmp_path)]) == 130  # a program calling main() in process is not killed


# ---- nothing to scan ----

def test_paths_with_nothing_to_scan_exit_2_with_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("torch.compile\n")
    notpy = tmp_path / "passwd"
    notpy.write_text("root:x:0:0:root:/root:/bin/bash\n")
    cases = {
        (str(empty),): "no Python file in it",
        (str(tmp_path / "docs"),): "no Python file in it",
        (str(tmp_path / "typo"),): "no such file or directory",
        (str(notpy),): "not a Python file",
        ("--diff", str(empty), str(FIXTURES / "spellings")): "no Python file in it",
        ("--fail-on", "unguarded", str(empty)): "no Python file in it",
    }
    for argv, words in cases.items():
        res = run_scan(*argv)
        assert res.returncode == 2, (argv, res.stdout)
        assert len(res.stderr.splitlines()) == 1 and words in res.stderr and "Traceback" not in res.stderr, argv
    script = tmp_path / "tool"
    script.write_text("#!/usr/bin/env python3\nimport torch\nf = torch.compile(g)\n")
    assert len(scan([script], patches=()).sites) == 1  # a #! python script without .py is Python


# ---- verdicts and counts ----

def test_test_and_benchmark_directories_are_counted_apart(tmp_path):
    pkg = tmp_path / "pkg"
    for d in ("pkg", "pkg/srt", "pkg/test", "pkg/benchmark", "pkg/srt/tests"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "__init__.py").write_text("")
    site = "import torch\n\nf = torch.compile(g)\n"
    for f in ("srt/a.py", "test/b.py", "benchmark/c.py", "srt/tests/d.py", "srt/test_e.py"):
        (pkg / f).write_text(site)
    rep = scan([pkg], patches=())
    assert sorted((s.path.split("pkg/", 1)[1], s.in_tests) for s in rep.sites) == [
        ("benchmark/c.py", True), ("srt/a.py", False), ("srt/test_e.py", False), ("srt/tests/d.py", True),
        ("test/b.py", True)]
    s = rep.summary()
    assert s["sites_in_tests"] == 3 and s["in_tests"][UNGUARDED] == 3
    text = " ".join(report_table(rep).split())
    assert "in serving code: 2 (0 guarded, 0 npu-backend, 2 unguarded, 0 unknown)" in text
    assert "under test/ and benchmark/ directories: 3 (" in text
    skipped = scan([pkg], patches=(), skip_tests=True)
    assert sorted(s.path.split("pkg/", 1)[1] for s in skipped.sites) == ["srt/a.py", "srt/test_e.py"]
    assert scan([pkg / "test"], patches=(), skip_tests=True).sites  # a PATH named test is still scanned


def test_eager_backend_has_its_own_reason(tmp_path):
    (tmp_path / "m.py").write_text(
        "import torch\n\n@torch.compile(backend='eager')\ndef f(x):\n    return x\n\n"
        "@torch.compile\ndef g(x):\n    return x\n"
    )
    rep = scan([tmp_path], patches=())
    by = {s.target: s for s in rep.sites}
    assert "generates no code" in by["f"].reason and "vllm-ascend" in by["f"].reason
    assert by["g"].reason == "no disable=; default backend (inductor)"
    assert rep.summary()["unguarded_eager_backend"] == 1
    assert 'backend="eager" (no code generated): 1 of the 2 unguarded' in " ".join(report_table(rep).split())


def test_coverage_by_default_and_opt_in_records_apart(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "m.py").write_text(
        "import torch\nfrom x import get_compiler_backend\n\n"
        "@torch.compile\ndef on(x):\n    return x\n\n"
        "@torch.compile\ndef opt(x):\n    return x\n\n"
        "@torch.compile\ndef bare(x):\n    return x\n\n"
        "@torch.compile(backend=get_compiler_backend())\ndef npu(x):\n    return x\n"
    )

    def rec(name, qualname, default=True):
        return types.SimpleNamespace(name=name, module="pkg.m", qualname=qualname, scope="site", default=default)

    rep = scan([pkg], patches=[rec("on-rec", "on"), rec("opt-rec", "opt", default=False), rec("npu-rec", "npu")])
    s = rep.summary()
    assert (s["unguarded_covered"], s["unguarded_covered_default"], s["unguarded_covered_opt_in"]) == (2, 1, 1)
    assert (s["npu_backend_covered"], s["npu_backend_covered_default"]) == (1, 1)
    text = " ".join(report_table(rep).split())
    assert "covered by npu_compat: 1 of the 3 unguarded and 1 of the 1 npu-backend by default" in text
    assert "1 more unguarded by opt-in records (off unless NPU_COMPAT_EAGER names them)" in text
    assert rep.exit_code("unguarded") == 1  # opt-in coverage still fails the gate


def test_wording_plurals_unreadable_files_and_messages(tmp_path):
    (tmp_path / "a.py").write_text("import torch\n\nf = torch.compile(g)\n")
    one = report_table(scan([tmp_path], patches=()))
    assert one.startswith("npu-compat scan: 1 file read (1 parsed, 0 cannot hold a site, 0 failed)\n")
    assert "\n1 torch.compile site: 0 guarded" in one
    os.mkfifo(tmp_path / "fifo.py")
    rep = scan([tmp_path], patches=())
    s = rep.summary()
    assert (s["files_read"], s["files_unreadable"], s["files_failed"]) == (1, 1, 1)  # not counted as read
    assert "1 file read (1 parsed, 0 cannot hold a site, 0 failed), 1 unreadable" in " ".join(report_table(rep).split())
    bad = tmp_path / "not-a-report.json"
    bad.write_text("{}")
    res = run_scan("--diff", bad, FIXTURES / "spellings")
    assert res.returncode == 2
    assert res.stderr.count("npu-compat scan --json") == 1 and 'it has no "sites" list' in res.stderr
