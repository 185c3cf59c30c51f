"""`npu-compat run`: the command gets the signals it would get without Python in between,
and a command whose interpreter cannot load npu_compat is warned about, once."""

import os
import re
import resource
import signal
import subprocess
import sys

import pytest
from conftest import clean_env, record_cases

PYENV = "/root/.pyenv/versions"
SIGNALS = "run: the command's signal dispositions are as without npu-compat"
PROBE = "run: one warning exactly when the command's Python will not load npu_compat"


def run_cmd(*cmd):
    return [sys.executable, "-m", "npu_compat", "run", "--", *cmd]


@pytest.mark.parametrize("via", ["direct", "npu-compat run"])
def test_a_pipeline_dies_of_sigpipe_as_without_npu_compat(tmp_path, via):
    # Through a real pipe: `yes | head -1` ends with yes killed by SIGPIPE (141)
    # and nothing on stderr. Python ignores SIGPIPE and exec kept that: yes then
    # printed "Broken pipe" and exited 1.
    prefix = "" if via == "direct" else " ".join(run_cmd()) + " "
    script = f'{prefix}yes | head -1; echo "status=${{PIPESTATUS[0]}}"'
    proc = subprocess.run(["bash", "-c", script], env=clean_env(), capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.stdout.split() == ["y", "status=141"], proc.stderr
    assert proc.stderr == ""
    if via != "direct":
        record_cases(SIGNALS, 1)


def _fsize_limit():
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))


@pytest.mark.parametrize("via", ["direct", "npu-compat run"])
def test_a_write_past_the_file_size_limit_dies_of_sigxfsz_as_without_npu_compat(tmp_path, via):
    cmd = ["head", "-c", "4096", "/dev/zero"]
    with open(tmp_path / "out", "wb") as out:
        proc = subprocess.run(
            cmd if via == "direct" else run_cmd(*cmd),
            env=clean_env(PYTHONDONTWRITEBYTECODE="1"),
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            preexec_fn=_fsize_limit,
            cwd=tmp_path,
        )
    assert proc.returncode == -signal.SIGXFSZ, proc.stderr
    if via != "direct":
        record_cases(SIGNALS, 1)


def _signal_masks():
    with open("/proc/self/status") as f:
        return {k: v for k, v in (line.split(":\t", 1) for line in f if ":\t" in line) if k in ("SigIgn", "SigBlk")}


INHERITED = {
    "nothing ignored": (),
    "nohup and a background job": (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT),
}


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
@pytest.mark.parametrize("ignored", list(INHERITED), ids=list(INHERITED))
def test_the_command_gets_the_callers_signal_dispositions_not_pythons(tmp_path, ignored):
    # The ignored and blocked signal masks of a non-Python command are the same
    # whether it runs alone or under `npu-compat run`: what the caller ignored
    # stays ignored, what Python ignored or handled for itself does not leak.
    def setup():
        for sig in INHERITED[ignored]:
            signal.signal(sig, signal.SIG_IGN)

    cmd = ["grep", "-E", "^Sig(Ign|Blk):", "/proc/self/status"]
    out = {}
    for via, argv in (("direct", cmd), ("run", run_cmd(*cmd))):
        proc = subprocess.run(
            argv, env=clean_env(), capture_output=True, text=True, timeout=60, preexec_fn=setup, cwd=tmp_path
        )
        assert proc.returncode == 0, proc.stderr
        out[via] = proc.stdout
    assert out["run"] == out["direct"]
    ign = int(re.search(r"SigIgn:\s*([0-9a-f]+)", out["run"]).group(1), 16)
    for sig in INHERITED[ignored]:
        assert ign & (1 << (sig - 1))
    record_cases(SIGNALS, 1)


def _python(version):
    path = os.path.join(PYENV, version, "bin", "python")
    if not os.path.exists(path):
        pytest.skip(f"{path} is not installed")
    return path


WARNING = "cannot import npu_compat"


@pytest.mark.parametrize("version", ["3.10.13", "2.7.18"])
@pytest.mark.parametrize("how", ["interpreter", "script"])
def test_run_warns_once_when_the_commands_python_cannot_import_npu_compat(tmp_path, version, how):
    python = _python(version)  # a pyenv interpreter: no npu_compat in its site-packages
    if how == "interpreter":
        cmd = [python, "-c", "print('ran')"]
    else:  # a console script whose #! line names that interpreter
        script = tmp_path / "tool"
        script.write_text(f"#!/usr/bin/env {python}\nprint('ran')\n")
        script.chmod(0o755)
        cmd = [str(script)]
    proc = subprocess.run(
        run_cmd(*cmd), env=clean_env(PYTHONDONTWRITEBYTECODE="1"), capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ran", proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and WARNING in lines[0] and python in lines[0], proc.stderr
    record_cases(PROBE, 1)


@pytest.mark.parametrize("how", ["interpreter", "script"])
def test_run_does_not_warn_when_the_commands_python_has_npu_compat(tmp_path, how):
    code = "import sys; m = sys.modules.get('npu_compat'); print(m.route())"
    if how == "interpreter":
        cmd = [sys.executable, "-c", code]
    else:
        script = tmp_path / "tool"
        script.write_text(f"#!{sys.executable}\n{code}\n")
        script.chmod(0o755)
        cmd = [str(script)]
    proc = subprocess.run(run_cmd(*cmd), env=clean_env(), capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "run", proc.stderr
    assert proc.stderr == ""
    record_cases(PROBE, 1)


def test_run_does_not_probe_a_command_that_is_not_python(tmp_path):
    proc = subprocess.run(run_cmd("echo", "hi"), env=clean_env(), capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "hi\n", "")
    record_cases(PROBE, 1)


@pytest.mark.parametrize(
    "options, warned",
    [
        (["-I"], "-I"),
        (["-E"], "-E"),
        (["-S"], "-S"),
        (["-sI"], "-I"),
        (["-W", "ignore", "-E"], "-E"),
        (["-X", "dev", "-u"], None),
        (["-B"], None),
    ],
)
def test_run_warns_when_the_python_command_line_keeps_the_bootstrap_out(tmp_path, options, warned):
    # -I and -E ignore PYTHONPATH, -S skips sitecustomize: the run route cannot
    # reach such a process, and says so instead of failing silently.
    code = "import sys; m = sys.modules.get('npu_compat'); print(bool(m and m.is_active()))"
    proc = subprocess.run(
        run_cmd(sys.executable, *options, "-c", code), env=clean_env(), capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(warned is None)
    lines = proc.stderr.strip().splitlines()
    if warned is None:
        assert lines == []
    else:
        assert len(lines) == 1 and f"runs with {warned}" in lines[0], proc.stderr
    record_cases(PROBE, 1)


def test_run_reads_the_options_on_a_scripts_interpreter_line(tmp_path):
    script = tmp_path / "tool"
    script.write_text(f"#!{sys.executable} -E\nprint('ran')\n")
    script.chmod(0o755)
    proc = subprocess.run(run_cmd(str(script)), env=clean_env(), capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "ran", proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "runs with -E" in lines[0], proc.stderr
    record_cases(PROBE, 1)
