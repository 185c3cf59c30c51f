"""docs/scan.md's example outputs and numbers are what the code gives on the real sglang trees.

Each ``<!-- example:NAME -->`` block is regenerated here, the way a user runs
the command (the installed package in a subprocess, 80 columns, no TTY), from
the 0.5.13 and 0.5.23 trees of the venv in NPU_COMPAT_SGLANG_PYTHON; only the
time a scan took differs from run to run. docs/audit.md's claim of the files
the default patch touches is checked against the patch too.
"""

import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT, clean_env

from npu_compat.scan import Diff, scan

_PY = os.environ.get("NPU_COMPAT_SGLANG_PYTHON")
_PY = os.path.abspath(_PY) if _PY else _PY  # the README gives it relative to the checkout
pytestmark = pytest.mark.skipif(not _PY, reason="NPU_COMPAT_SGLANG_PYTHON is not set (the venv with sglang 0.5.13, 0.5.23)")

EXAMPLE = re.compile(r"<!-- example:(\S+) -->\n```\n(.*?)```\n", re.S)


def _tree(version):
    from test_scan_sglang import _tree

    return _tree(version)


def page(name):
    with open(os.path.join(ROOT, "docs", name), encoding="utf-8") as f:
        return f.read()


def normalized(text):
    return re.sub(r"^scanned in [0-9.]+ s$", "scanned in N s", text, flags=re.M)


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    """A directory holding sg-old/sglang (0.5.13) and sg-new/sglang (0.5.23), as the docs' /tmp."""
    base = tmp_path_factory.mktemp("docs-scan")
    for name, version in (("sg-old", "0.5.13"), ("sg-new", "0.5.23")):
        (base / name).mkdir()
        os.symlink(_tree(version), base / name / "sglang")
    return base


def npu_compat(cwd, *args):
    proc = subprocess.run([sys.executable, "-m", "npu_compat", *args], cwd=cwd, env=clean_env(COLUMNS="80"),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)  # fmt: skip
    return proc


def test_each_scan_example_is_what_the_command_prints(trees):
    examples = dict(EXAMPLE.findall(page("scan.md")))
    assert set(examples) == {"scan-head", "scan-diff-head", "scan-diff-tail", "scan-patch", "scan-patch-stderr"}
    scan_out = npu_compat(trees, "scan", "sg-new/sglang")
    assert scan_out.returncode == 0, scan_out.stderr
    doc = normalized(examples["scan-head"]).splitlines(keepends=True)
    assert normalized(scan_out.stdout).splitlines(keepends=True)[: len(doc)] == doc
    diff = npu_compat(trees, "scan", "--diff", "sg-old/sglang", "sg-new/sglang")
    assert diff.returncode == 0, diff.stderr
    assert diff.stdout.startswith(examples["scan-diff-head"])
    assert diff.stdout.endswith(examples["scan-diff-tail"])
    patch = npu_compat(trees, "scan", "--patch", "sg-old/sglang")
    assert patch.returncode == 0
    assert patch.stdout == examples["scan-patch"]
    assert patch.stderr == examples["scan-patch-stderr"]


def test_the_results_on_released_sglang_are_the_scanners(trees):
    text = page("scan.md")
    reports = {v: scan([_tree(v)], patches=()) for v in ("0.5.13", "0.5.23")}
    for v, rep in reports.items():
        c = rep.counts()
        row = f"| {v} | {rep.files_read:,} | {len(rep.sites)} | {c['guarded']} | {c['npu-backend']} | "
        row += f"{c['unguarded']} | {c['unknown']} |"
        assert row in text
    d = Diff(reports["0.5.13"], reports["0.5.23"], "0.5.13", "0.5.23")

    def kinds(sites):
        n = {}
        for s in sites:
            n[s.verdict] = n.get(s.verdict, 0) + 1
        return ", ".join(f"{count} {verdict}" for count, verdict in sorted(((v, k) for k, v in n.items()), reverse=True))

    said = " ".join(text.split())  # the sentence is wrapped
    assert f"reports {len(d.added)} sites added ({kinds(d.added)})" in said
    assert f"{len(d.removed)} removed ({kinds(d.removed)})" in said
    assert f"and {len(d.changed)} verdict changed" in said
    new = reports["0.5.23"]
    assert f"sglang 0.5.23 ({new.files_read:,} files," in said
    assert f"{new.files_parsed} files parsed, {new.files_read - new.files_parsed:,} not needing a parse" in said


def test_audit_md_names_the_files_the_default_patch_touches(trees):
    said = " ".join(page("audit.md").split())
    for name, version in (("sg-old", "0.5.13"), ("sg-new", "0.5.23")):
        out = npu_compat(trees, "scan", "--patch", f"{name}/sglang").stdout
        files = [line[len("+++ b/python/sglang/srt/"):] for line in out.splitlines() if line.startswith("+++ ")]
        words = {2: "two", 3: "three", 4: "four", 5: "five"}[len(files)]
        listed = ", ".join(f"`{f}`" for f in files)
        assert f"{version} the default patch touches {words} files ({listed})" in said or (
            f"for {version} {words} ({listed})" in said
        ), (version, files)
