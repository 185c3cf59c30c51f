"""The command line as a user meets it (issue 18): help, version, status (80 columns, --no-import
without torch, the install route, DISABLE, the forced preview), uninstall's wording, the import
cost of ``import npu_compat``, and run's own module."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, clean_env

from npu_compat import cli, device

WIDTH = 80


def npu_compat_cmd(*argv, env=None, python=None, cwd=None, timeout=120):
    """``python -m npu_compat ARGV`` of this checkout, from outside it, with a clean environment."""
    e = clean_env(**(env or {}))
    e["PYTHONPATH"] = os.pathsep.join([ROOT] + ([e["PYTHONPATH"]] if e.get("PYTHONPATH") else []))
    return subprocess.run(
        [python or sys.executable, "-m", "npu_compat", *argv], env=e, capture_output=True, text=True,
        timeout=timeout, cwd=cwd or os.path.dirname(ROOT),
    )


def too_wide(text):
    """Lines over 80 columns, except those that are one word (a path or name with nowhere to cut)."""
    return [line for line in text.splitlines() if len(line) > WIDTH and len(line.split()) > 1]


# ---- help and version ----

def test_every_command_has_a_description_and_an_example():
    top = npu_compat_cmd("--help")
    assert top.returncode == 0, top.stderr
    helped = npu_compat_cmd("help")
    assert helped.returncode == 0 and helped.stdout == top.stdout
    names = [c.name for c in cli.COMMANDS]
    assert {"status", "run", "scan", "install", "uninstall", "bootstrap-path", "help"} <= set(names)
    for c in cli.COMMANDS:
        listing = top.stdout.splitlines()
        at = [i for i, ln in enumerate(listing) if ln.split()[:1] == [c.name]]
        assert at and " ".join(c.summary.split()[:3]) in " ".join(listing[at[0]:at[0] + 2]), (c.name, top.stdout)
        for argv in ([c.name, "--help"], ["help", c.name]):
            res = npu_compat_cmd(*argv)
            assert res.returncode == 0, (argv, res.stderr)
            assert "example" in res.stdout.lower(), (argv, res.stdout)
            assert not too_wide(res.stdout), (argv, too_wide(res.stdout))
        assert c.example.startswith("npu-compat ") or "npu-compat " in c.example
    run_help = npu_compat_cmd("run", "--help").stdout
    assert "replaces this process" in run_help and "-- COMMAND [ARGS...]" in run_help
    bad = npu_compat_cmd("help", "nope")
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1 and "Traceback" not in bad.stderr


def test_version_is_0_3_0_and_dated_in_the_changelog():
    res = npu_compat_cmd("--version")
    assert res.stdout.strip() == "npu-compat 0.3.0"
    with open(os.path.join(ROOT, "CHANGELOG.md")) as f:
        text = f.read()
    assert "## [0.3.0] (2026-12-04)" in text and "unreleased" not in text.lower()


def test_cli_keeps_only_parsing_and_dispatch():
    with open(os.path.join(ROOT, "npu_compat", "cli.py")) as f:
        text = f.read()
    for helper in ("def _python_of", "def _restore_signals", "def _isolating_option", "os.execvpe"):
        assert helper not in text
    from npu_compat import runner

    assert callable(runner.run) and callable(runner._python_of) and callable(runner._restore_signals)


# ---- status ----

def _status_json(*extra, env=None, python=None):
    res = npu_compat_cmd("status", "--json", *extra, env=env, python=python)
    assert res.returncode in (0, 1), res.stderr
    return json.loads(res.stdout)


NO_IMPORT_CHECK = (
    "import sys, io, contextlib\n"
    "from npu_compat.cli import main\n"
    "with contextlib.redirect_stdout(io.StringIO()): rc = main(['status', '--no-import'])\n"
    "print(rc, sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torch_npu', 'sglang', 'wrapt',"
    " 'numpy', 'importlib_metadata') or m == 'importlib.metadata'))\n"
)


def _pythons():
    out = [sys.executable]  # torch installed
    if os.environ.get("NPU_COMPAT_SGLANG_PYTHON"):
        out.append(os.path.abspath(os.environ["NPU_COMPAT_SGLANG_PYTHON"]))  # torch and sglang installed
    return out


@pytest.mark.parametrize("python", _pythons())
def test_status_no_import_imports_no_torch_sglang_or_torch_npu(python):
    env = clean_env(PYTHONPATH=ROOT)
    res = subprocess.run([python, "-c", NO_IMPORT_CHECK], env=env, capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(ROOT))
    assert res.returncode == 0, res.stderr
    assert res.stdout.split(None, 1)[1].strip() == "[]", res.stdout
    text = npu_compat_cmd("status", "--no-import", python=python)
    assert text.returncode == 0 and not too_wide(text.stdout), too_wide(text.stdout)
    assert "from installed files; torch not imported" in " ".join(text.stdout.split())
    assert text.stderr == ""  # nor torch's warnings


def test_status_fits_80_columns_in_every_state():
    for env in ({}, {"NPU_COMPAT_DEVICE": "npu"}, {"NPU_COMPAT_DISABLE": "1"}, {"NPU_COMPAT_EAGER": "all"}):
        for extra in ((), ("--no-import",)):
            res = npu_compat_cmd("status", *extra, env=env)
            assert res.returncode in (0, 1), res.stderr
            assert not too_wide(res.stdout), (env, extra, too_wide(res.stdout))
            assert res.stdout.startswith("npu-compat 0.3.0, Python ")


def test_device_evidence_without_importing(monkeypatch, tmp_path):
    monkeypatch.delenv("NPU_COMPAT_DEVICE", raising=False)
    monkeypatch.setattr(device, "DEV_DIR", str(tmp_path))
    monkeypatch.setattr(device, "torch_npu_installed", lambda: True)
    for name in ("davinci_manager", "davinci10", "davinci2", "devmm_svm"):
        (tmp_path / name).write_text("")
    npu, why = device.evidence(ignore_setting=True)
    assert npu is True and "2 Ascend device files" in why and why.endswith("not confirmed by torch.npu.is_available()")
    assert device.device_files() == [str(tmp_path / "davinci2"), str(tmp_path / "davinci10")]
    for name in ("davinci10", "davinci2"):
        (tmp_path / name).unlink()
    assert device.evidence(ignore_setting=True) == (
        False, f"torch_npu is installed, but no Ascend device file ({tmp_path}/davinci<N>) is present")
    monkeypatch.setattr(device, "torch_npu_installed", lambda: False)
    assert device.evidence(ignore_setting=True) == (False, "torch_npu is not installed")
    monkeypatch.setenv("NPU_COMPAT_DEVICE", "npu")
    assert device.evidence() == (True, "forced by NPU_COMPAT_DEVICE=npu")


def test_forced_npu_on_a_cpu_box_says_it_is_a_preview():
    # issue 17 item 15: sglang's own is_npu() is false here, so states differ from a real NPU's
    d = _status_json("--no-import", env={"NPU_COMPAT_DEVICE": "npu"})
    assert d["device"]["npu"] is True and "torch_npu is not installed" in d["device"]["preview"]
    assert "upstream-fixed" in d["device"]["preview"]
    text = npu_compat_cmd("status", "--no-import", env={"NPU_COMPAT_DEVICE": "npu"}).stdout
    assert "\npreview:    this machine is not an NPU" in text
    assert _status_json("--no-import")["device"]["preview"] is None


def test_status_under_the_install_route_says_children_activate(tmp_path):
    # issue 17 item 13: the installed sitecustomize activates every process of the interpreter
    site = tmp_path / "site"
    site.mkdir()
    assert cli.main(["install", "--site-dir", str(site)]) == 0
    env = {"PYTHONPATH": str(site)}  # site is first on sys.path: its sitecustomize runs at start-up
    d = _status_json("--no-import", env=env)
    assert d["route"] == "sitecustomize" and d["children_inherit"] is True
    assert d["installed_sitecustomize"] == str(site / "sitecustomize.py")
    text = npu_compat_cmd("status", "--no-import", env=env).stdout
    assert "do not activate" not in text and "Python children of this interpreter activate npu_compat" in text
    # NPU_COMPAT_DISABLE=1: off, and nothing claims that a process activates
    off = npu_compat_cmd("status", "--no-import", env=dict(env, NPU_COMPAT_DISABLE="1")).stdout
    assert "activation: off: NPU_COMPAT_DISABLE" in off
    assert "every sglang process activates" not in off and "turns it off in them too" in off
    plain = npu_compat_cmd("status", "--no-import").stdout
    assert "Python children do not activate npu_compat by themselves" in plain


def test_uninstall_says_what_it_did(tmp_path, capsys):
    site = str(tmp_path)
    assert cli.main(["install", "--site-dir", site]) == 0
    assert cli.main(["uninstall", "--site-dir", site, "--dry-run"]) == 0
    assert cli.main(["uninstall", "--site-dir", site]) == 0
    out = capsys.readouterr().out.splitlines()
    path = os.path.join(site, "sitecustomize.py")
    assert out[-2:] == [f"would remove {path}", f"removed {path}"]


# ---- import cost (item 11) ----

def test_import_npu_compat_loads_no_other_module():
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); before = set(sys.modules)\n"
        "import npu_compat\n"
        "print(sorted(set(sys.modules) - before))"
    )
    res = subprocess.run([sys.executable, "-S", "-I", "-c", code, ROOT], capture_output=True, text=True, timeout=60,
                         cwd=os.path.dirname(ROOT))
    new = set(json.loads(res.stdout.replace("'", '"')))
    # os and its parts are what -S leaves unloaded; importlib and warnings would be the plugin-route check
    assert new <= {"npu_compat", "os", "os.path", "posixpath", "genericpath", "stat", "_stat", "_collections_abc"}, new
