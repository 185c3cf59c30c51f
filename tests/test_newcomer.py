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


# ---- status: 24 rows, settings, typos, --json agrees ----

SG_PYTHON = os.environ.get("NPU_COMPAT_SGLANG_PYTHON")
SG_PYTHON = os.path.abspath(SG_PYTHON) if SG_PYTHON else SG_PYTHON  # the README gives it relative


def status(tmp_path, *args, env=None, python=sys.executable):
    extra = dict(env or {})
    if python != sys.executable:  # another venv: npu_compat from this checkout on its path
        extra["PYTHONPATH"] = ROOT
    return npu_compat_cli(tmp_path, "status", *args, env=extra, python=python)


def assert_fits(text, rows=23):  # 24 rows less the shell's prompt
    lines = text.splitlines()
    assert len(lines) <= rows, text
    assert max(map(len, lines)) <= 80, text
    assert lines[1].startswith("device:") and any(x.startswith("activation:") for x in lines[1:6]), text
    assert [x for x in lines if x.startswith("summary:")] and lines[-1].startswith(("summary:", " ")), text


def test_status_without_sglang_fits_24_rows_and_verbose_has_the_full_blocks(tmp_path):
    proc = status(tmp_path)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert_fits(proc.stdout)
    assert proc.stdout.count("sglang is not installed") <= 1
    assert "settings:   EAGER -, STRICT 0, REPORT -, FALLBACK 1, SPEED off, LOG_LEVEL -," in proc.stdout
    full = status(tmp_path, "--verbose").stdout
    assert len(full.splitlines()) > 40 and full.count("sglang is not installed") == 9
    assert "now: not imported; upstream: sglang PR #26403" in full


@pytest.mark.skipif(not SG_PYTHON, reason="NPU_COMPAT_SGLANG_PYTHON is not set (the venv with real sglang)")
@pytest.mark.parametrize("device", ["", "npu"])
def test_status_with_sglang_fits_24_rows_off_npu_and_on_a_forced_npu(tmp_path, device):
    proc = status(tmp_path, env={"NPU_COMPAT_DEVICE": device or None}, python=SG_PYTHON)
    assert proc.returncode == 0, proc.stderr
    assert_fits(proc.stdout)
    assert ("applied" if device else "not-needed") in proc.stdout


def test_each_settings_typo_is_the_one_warning_activation_gives(tmp_path):
    typos = {"NPU_COMPAT_STRICT": "maybe", "NPU_COMPAT_LOG_LEVEL": "verbose", "NPU_COMPAT_FALLBACK": "2",
             "NPU_COMPAT_DISABLE": "overlap-asert-nonneg"}  # fmt: skip
    act = subprocess.run([sys.executable, "-c", "import npu_compat"], cwd=tmp_path, env=clean_env(**typos),
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    warned = act.stderr.splitlines()
    assert act.returncode == 0 and len(warned) == 4, act.stderr
    assert "(did you mean overlap-assert-nonneg?)" in act.stderr
    proc = status(tmp_path, env=typos)
    assert proc.stderr == "", proc.stderr  # shown in the text, not twice
    shown = " ".join(proc.stdout.split())
    for line in warned:
        assert f"WARNING {' '.join(line.split())}" in shown
    assert "STRICT 0" in shown and "FALLBACK 1" in shown and "LOG_LEVEL -" in shown
    assert "4 bad settings" in shown
    assert_fits(proc.stdout, rows=40)  # four typos cost their lines (not the common case), still 80 columns
    data = json.loads(status(tmp_path, "--json", env=typos).stdout)
    assert data["settings"]["STRICT"] == "0" and len(data["setting_warnings"]) == 4


def test_an_eager_name_typo_gets_did_you_mean(tmp_path):
    act = subprocess.run([sys.executable, "-c", "import npu_compat"], cwd=tmp_path,
                         env=clean_env(NPU_COMPAT_EAGER="rotary-aply-native"), capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert "(did you mean rotary-apply-native?)" in act.stderr and act.stderr.count("\n") == 1, act.stderr


def test_status_json_active_agrees_with_the_text(tmp_path):
    data = json.loads(status(tmp_path, "--json").stdout)
    text = status(tmp_path).stdout
    assert data["active"] is False and "not set up here" in text
    assert data["active_here"] is True  # the command itself activated to evaluate the records
    boot = subprocess.run([sys.executable, "-m", "npu_compat", "bootstrap-path"], capture_output=True, text=True,
                          env=clean_env(), cwd=tmp_path).stdout.strip()  # fmt: skip
    data = json.loads(status(tmp_path, "--json", env={"PYTHONPATH": boot}).stdout)
    assert data["active"] is True and "activates npu_compat via" in status(tmp_path, env={"PYTHONPATH": boot}).stdout


def test_a_missing_sglang_dependency_is_one_clear_reason(tmp_path):
    from npu_compat import registry

    (tmp_path / "site").mkdir()
    for mod in registry.target_modules():  # every target module exists; sglang itself cannot import
        path = tmp_path / "site" / (mod.replace(".", "/") + ".py")
        for d in reversed(path.relative_to(tmp_path / "site").parents[:-1]):
            (tmp_path / "site" / d).mkdir(exist_ok=True)
            (tmp_path / "site" / d / "__init__.py").touch()
        path.touch()
    (tmp_path / "site" / "sglang" / "__init__.py").write_text("import numpy_that_is_not_installed\n")
    proc = status(tmp_path, env={"PYTHONPATH": str(tmp_path / "site")})
    assert "KeyError" not in proc.stdout, proc.stdout
    text = " ".join(proc.stdout.split())
    assert "import-error 9:" in text and text.count("sglang cannot be imported: it needs numpy_that_is_not_installed, which is not installed") == 1, proc.stdout
    assert_fits(proc.stdout)


# ---- audit --fail-on with an unreadable file; run's probe in a checkout ----


def test_audit_fail_on_with_a_file_that_cannot_be_read_exits_1(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"pid": 1, "compiles": []}) + "\n")
    proc = npu_compat_cli(tmp_path, "audit", "--fail-on", "fell-back", str(good), str(tmp_path / "missing.jsonl"))
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "could not be read" in proc.stderr
    assert npu_compat_cli(tmp_path, "audit", str(good), str(tmp_path / "missing.jsonl")).returncode == 0


def test_run_in_a_checkout_is_not_fooled_by_the_current_directory():
    other = "/root/.pyenv/versions/3.10.13/bin/python"
    if not os.path.exists(other):
        pytest.skip(f"{other} is not installed")
    proc = subprocess.run([sys.executable, "-m", "npu_compat", "run", "--", other, "-c", "print('ran')"],
                          cwd=ROOT, env=clean_env(PYTHONDONTWRITEBYTECODE="1"), capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.stdout.strip() == "ran" and "cannot import npu_compat" in proc.stderr, proc.stderr


# ---- every example is safe: no empty PYTHONPATH entry ----

SAFE = ("${PYTHONPATH:+:$PYTHONPATH}", "${PYTHONPATH:+:${PYTHONPATH}}")


def unsafe_pythonpath(text):
    """Lines that set PYTHONPATH so that it can end up with an empty entry (the current directory)."""
    bad = []
    for line in text.splitlines():
        for s in SAFE:
            line = line.replace(s, "")
        for m in re.finditer(r'PYTHONPATH[=:]\s*(?:"([^"]*)"|([^\s`|]*))', line):
            value = m.group(1) if m.group(1) is not None else m.group(2)
            if "$PYTHONPATH" in value or "${PYTHONPATH}" in value or value.startswith(":") or value.endswith(":") \
                    or "::" in value:  # fmt: skip
                bad.append(line.strip())
    return bad


def test_no_example_leaves_an_empty_pythonpath_entry(tmp_path):
    texts = {}
    for rel in ["README.md", "CHANGELOG.md"] + [os.path.join("docs", p) for p in os.listdir(os.path.join(ROOT, "docs"))]:
        with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
            texts[rel] = f.read()
    from npu_compat.cli import COMMANDS

    for c in COMMANDS:
        texts[f"npu-compat help {c.name}"] = npu_compat_cli(tmp_path, "help", c.name).stdout
    texts["npu-compat help"] = npu_compat_cli(tmp_path, "help").stdout
    assert "bootstrap-path)${PYTHONPATH:+:$PYTHONPATH}" in texts["npu-compat help"]
    found = {k: unsafe_pythonpath(v) for k, v in texts.items()}
    assert not {k: v for k, v in found.items() if v}
    assert unsafe_pythonpath('export PYTHONPATH="$(npu-compat bootstrap-path):$PYTHONPATH"')  # the check works


# ---- docs: the example outputs are the code's ----

EXAMPLE = re.compile(r"<!-- example:(\S+) -->\n```\n(.*?)```\n", re.S)


def normalized_status(tmp_path, *args):
    """`npu-compat status` here, with what differs from machine to machine written as in the docs."""
    out = status(tmp_path, *args).stdout
    out = re.sub(r"^npu-compat \S+, Python \S+", "npu-compat VERSION, Python 3.X.Y", out, flags=re.M)
    out = re.sub(r"^python: .*$", "python:     /venv/bin/python3", out, flags=re.M)
    out = re.sub(r"^versions: .*$", "versions:   torch 2.13.0+cpu, torch_npu -, sglang -, wrapt 2.5.2", out, flags=re.M)
    return out


def test_the_status_example_in_docs_states_md_is_what_status_prints(tmp_path):
    from importlib.machinery import PathFinder

    if PathFinder.find_spec("sglang") is not None:
        pytest.skip("the example is of a machine without sglang")
    with open(os.path.join(ROOT, "docs", "states.md"), encoding="utf-8") as f:
        examples = dict(EXAMPLE.findall(f.read()))
    assert examples["status-no-sglang"] == normalized_status(tmp_path)


def test_the_settings_import_npu_compat_watches_are_the_ones_env_reads():
    import npu_compat
    from npu_compat import _env

    assert npu_compat.SETTING_VARS == tuple("NPU_COMPAT_" + n for n in _env.SETTINGS)
