"""What a new user meets (issue 24): every check runs the installed package the way a user does,
in a subprocess, from outside the checkout, 80 columns, no TTY."""

import json
import os
import re
import subprocess
import sys
import types

import pytest
from conftest import ROOT, TESTS, clean_env

from npu_compat.scan import Diff, scan
from npu_compat.scan.render import diff_table

UPGRADE = os.path.join(TESTS, "scan_fixtures", "upgrade")


def npu_compat_cli(tmp_path, *args, env=None, python=sys.executable):
    """``npu-compat ARGS`` from a directory outside the checkout, COLUMNS=80, no TTY."""
    e = clean_env(COLUMNS="80", LINES="24", **(env or {}))
    return subprocess.run([python, "-m", "npu_compat", *args], cwd=tmp_path, env=e, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=240)  # fmt: skip


# ---- scan ends with its summary; --diff names coverage ----


def test_scan_text_ends_with_its_summary(tmp_path):
    proc = npu_compat_cli(tmp_path, "scan", os.path.join(UPGRADE, "new"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("npu-compat scan: 3 files read")
    tail = lines[-5:]
    assert any(x.startswith("npu-compat scan: 3 files read") for x in tail), tail
    assert lines[-1].startswith("scanned in ")
    assert max(map(len, lines)) <= 80


def test_diff_text_names_the_record_that_covers_a_site():
    rec = types.SimpleNamespace(name="added-rec", module="pkg.a", qualname="added", scope="site", default=True)
    old, new = scan([os.path.join(UPGRADE, "old")], patches=()), scan([os.path.join(UPGRADE, "new")], patches=[rec])
    text = diff_table(Diff(old, new))
    block = text.split("added (2):", 1)[1].split("\n\n", 1)[0]
    assert "pkg.a:" in block and "covered by added-rec" in block
    assert block.count("covered by") == 1  # only the covered one
    assert all(s.covered_by == "added-rec" for s in Diff(old, new).added if s.target == "added")
