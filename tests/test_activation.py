"""Every route reaches every process: spawn/forkserver/fork workers, torch ranks, run, sitecustomize, plugin."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
from conftest import TESTS, clean_env, record_cases, run_py

import npu_compat

OURS = {"_assert_nonneg_and_invalidate": "ours", "_gather_spec_extras": "ours"}
FORCED = {"NPU_COMPAT_DEVICE": "npu"}  # spawned children cannot share a simulated device module


def _overlap_states(r):
    # The fixture tree holds only overlap_utils: other records stay pending.
    return {v for k, v in r["states"].items() if k.startswith("overlap-")}


def test_spawn_and_forkserver_workers_of_a_main_guarded_launcher(tree, tmp_path):
    launcher = tmp_path / "launch.py"
    launcher.write_text(
        textwrap.dedent(
            """
            import multiprocessing as mp
            from support import report, workers

            if __name__ == "__main__":
                import npu_compat  # only here, as a launch script would

                out = {}
                for method in ("spawn", "forkserver", "fork"):
                    ctx = mp.get_context(method)
                    q = ctx.Queue()
                    procs = [ctx.Process(target=workers.to_queue, args=(q,)) for _ in range(2)]
                    for p in procs:
                        p.start()
                    out[method] = [q.get(timeout=120) for _ in procs]
                    for p in procs:
                        p.join(60)
                report.emit(**out)
            """
        )
    )
    env = clean_env(**FORCED, PYTHONPATH=os.pathsep.join([tree("prefix"), TESTS]))
    proc = subprocess.run([sys.executable, str(launcher)], env=env, capture_output=True, text=True, timeout=300)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT:")]
    assert line, proc.stderr
    r = json.loads(line[0][7:])
    for method in ("spawn", "forkserver", "fork"):
        assert len(r[method]) == 2
        for worker in r[method]:
            assert worker["helpers"] == OURS, (method, worker)
            assert _overlap_states(worker) == {"applied"}
    assert {w["route"] for w in r["spawn"] + r["forkserver"]} == {"inherited"}
    assert {w["route"] for w in r["fork"]} == {"import"}  # the launcher's own state, inherited by fork


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_four_gloo_ranks_started_by_torch_multiprocessing_spawn(tree, tmp_path):
    out = tmp_path / "gathered.json"
    proc, r = run_py(
        """
import sys
import npu_compat
import torch.multiprocessing as tmp
from support import report, workers
tmp.spawn(workers.rank_main, args=(4, int(sys.argv[1]), sys.argv[2]), nprocs=4, join=True)
report.emit(ok=True)
""",
        tree=tree("prefix"),
        env=FORCED,
        args=[str(_free_port()), str(out)],
        timeout=300,
    )
    ranks = json.loads(out.read_text())
    assert len(ranks) == 4 and len({x["pid"] for x in ranks}) == 4
    for rank in ranks:
        assert rank["helpers"] == OURS
        assert _overlap_states(rank) == {"applied"}


PROBE = "from support import workers, report; report.emit(**workers.probe())"


def _npu_compat_cmd(*args):
    return [sys.executable, "-m", "npu_compat", *args]


def test_run_patches_a_process_that_never_imports_npu_compat(tree):
    env = clean_env(**FORCED, PYTHONPATH=os.pathsep.join([tree("prefix"), TESTS]))
    proc = subprocess.run(
        _npu_compat_cmd("run", "--", sys.executable, "-c", PROBE), env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout.split("RESULT:", 1)[1])
    assert r["helpers"] == OURS and r["route"] == "run"


@pytest.mark.parametrize("code", [0, 1, 3])
def test_run_passes_exit_status_through(code):
    proc = subprocess.run(
        _npu_compat_cmd("run", "--", sys.executable, "-c", f"import sys; sys.exit({code})"),
        env=clean_env(),
        timeout=60,
    )
    assert proc.returncode == code


def test_run_passes_sigterm_through():
    proc = subprocess.Popen(
        _npu_compat_cmd("run", "--", sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"),
        env=clean_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "up"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == -signal.SIGTERM


def test_run_never_uses_a_shell(tmp_path):
    marker = tmp_path / "touched"
    proc = subprocess.run(
        _npu_compat_cmd("run", "--", "echo", f"x; touch {marker}"), env=clean_env(), capture_output=True, text=True
    )
    assert proc.returncode == 0 and proc.stdout.strip() == f"x; touch {marker}"
    assert not marker.exists()


def test_run_errors():
    proc = subprocess.run(_npu_compat_cmd("run"), env=clean_env(), capture_output=True, text=True)
    assert proc.returncode == 2 and "no command" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run(_npu_compat_cmd("run", "--", "no-such-command-xyz"), env=clean_env(), capture_output=True, text=True)
    assert proc.returncode == 127 and len(proc.stderr.strip().splitlines()) == 1


def test_nested_run_and_repeated_activation_do_not_grow_pythonpath():
    inner = "import os, npu_compat; npu_compat.activate(); npu_compat.activate(); print(os.environ['PYTHONPATH'])"
    env = clean_env(PYTHONPATH="/opt/a:/opt/b:")  # the empty entry (the current directory) is kept
    proc = subprocess.run(
        _npu_compat_cmd("run", "--", *_npu_compat_cmd("run", "--", sys.executable, "-c", inner)),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip("\n").split(os.pathsep) == [npu_compat.BOOTSTRAP_DIR, "/opt/a", "/opt/b", ""]


def test_deactivate_takes_the_environment_back():
    _, r = run_py(
        """
import os, subprocess, sys
import npu_compat
from support import report
during = os.environ["PYTHONPATH"]
child = subprocess.run([sys.executable, "-c", "import sys; print('npu_compat' in sys.modules)"], capture_output=True, text=True)
npu_compat.deactivate()
after = os.environ.get("PYTHONPATH")
child_after = subprocess.run([sys.executable, "-c", "import sys; print('npu_compat' in sys.modules)"], capture_output=True, text=True)
report.emit(during=during, after=after, child=child.stdout.strip(), child_after=child_after.stdout.strip(),
            origin=os.environ.get("NPU_COMPAT_ORIGIN"))
"""
    )
    assert npu_compat.BOOTSTRAP_DIR in r["during"].split(os.pathsep)
    assert npu_compat.BOOTSTRAP_DIR not in (r["after"] or "").split(os.pathsep)
    assert r["child"] == "True" and r["child_after"] == "False"
    assert r["origin"] is None


def test_bootstrap_chains_to_the_images_own_sitecustomize_once_after_activation(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    marks = tmp_path / "marks"
    (user / "sitecustomize.py").write_text(
        "import sys\n"
        "active = 'npu_compat' in sys.modules and sys.modules['npu_compat'].is_active()\n"
        f"open({str(marks)!r}, 'a').write(f'user sitecustomize ran, npu_compat active={{active}}\\n')\n"
        "USER_MARK = 42\n"
        "sys.path.append('/opt/image-extra')  # what the image's start-up adds must stay\n"
    )
    env = clean_env(PYTHONPATH=os.pathsep.join([npu_compat.BOOTSTRAP_DIR, str(user), TESTS]))
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, npu_compat, sitecustomize; "
         "print(npu_compat.route(), sitecustomize.USER_MARK, '/opt/image-extra' in sys.path, sys.path.count(npu_compat.BOOTSTRAP_DIR))"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["sitecustomize", "42", "True", "1"]
    assert marks.read_text().splitlines() == ["user sitecustomize ran, npu_compat active=True"]


def test_bootstrap_in_an_interpreter_without_npu_compat_is_harmless(tmp_path):
    # A foreign interpreter that inherits PYTHONPATH (e.g. a system python) must start normally.
    # -S keeps this venv's site-packages (and its editable npu_compat) away and the
    # temporary working directory keeps the checkout away: the child really has no npu_compat.
    env = clean_env(PYTHONPATH=npu_compat.BOOTSTRAP_DIR, PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run(
        [sys.executable, "-S", "-c",
         "import importlib.util, sys; assert importlib.util.find_spec('npu_compat') is None, 'npu_compat importable';"
         "sys.path.insert(0, sys.argv[1]); import sitecustomize; print('ok', 'npu_compat' in sys.modules)",
         npu_compat.BOOTSTRAP_DIR],
        env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.split() == ["ok", "False"], proc.stderr
    assert proc.stderr == ""
    record_cases(FOREIGN_CASES, 1)


PYENV = "/root/.pyenv/versions"
FOREIGN_CASES = "bootstrap: interpreters without npu_compat start silently, own sitecustomize kept"
FOREIGN = [os.path.join(PYENV, v, "bin", "python") for v in ("2.7.18", "3.10.13")]


@pytest.mark.parametrize("python", FOREIGN, ids=lambda p: p.split(os.sep)[-3])
def test_a_foreign_interpreter_inheriting_the_bootstrap_starts_clean_and_keeps_its_own_sitecustomize(tmp_path, python):
    # Python 2.7 used to print "'import sitecustomize' failed" (the bootstrap did
    # not parse there) and lost its own sitecustomize.
    if not os.path.exists(python):
        pytest.skip(f"{python} is not installed")
    user = tmp_path / "user"
    user.mkdir()
    marks = tmp_path / "marks"
    (user / "sitecustomize.py").write_text(f"IMAGE_MARK = 'kept'\nopen({str(marks)!r}, 'a').write('ran\\n')\n")
    env = clean_env(PYTHONPATH=os.pathsep.join([npu_compat.BOOTSTRAP_DIR, str(user)]), PYTHONDONTWRITEBYTECODE="1")
    code = (
        "import sys, sitecustomize; "
        "sys.stdout.write('%s %s\\n' % (getattr(sitecustomize, 'IMAGE_MARK', None), 'npu_compat' in sys.modules))"
    )
    proc = subprocess.run([python, "-c", code], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.split() == ["kept", "False"]
    assert marks.read_text() == "ran\n"  # once
    (user / "sitecustomize.py").unlink()  # and with no sitecustomize of its own: still silent
    proc = subprocess.run([python, "-c", "print(1)"], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert (proc.returncode, proc.stdout.strip(), proc.stderr) == (0, "1", "")
    record_cases(FOREIGN_CASES, 1)


def test_plugin_entry_point_as_sglangs_loader_calls_it(tree):
    _, r = run_py(
        """
from importlib.metadata import entry_points
import sglang.srt.managers.overlap_utils as m
from support import report
eps = [ep for ep in entry_points(group="sglang.srt.plugins") if ep.name == "npu_compat"]
before = report.describe(m)
fn = eps[0].load()
fn()
first = report.describe(m)
obj = m._gather_spec_extras
fn()
import npu_compat
report.emit(n=len(eps), before=before, first=first, same=m._gather_spec_extras is obj,
            route=npu_compat.route(), states=report.states())
""",
        tree=tree("prefix"),
        env=FORCED,
    )
    assert r["n"] == 1
    assert r["before"] == {"_assert_nonneg_and_invalidate": "compiled", "_gather_spec_extras": "compiled"}
    assert r["first"] == OURS and r["same"] is True
    assert r["route"] == "plugin"


def test_plugin_respects_npu_compat_disable(tree):
    _, r = run_py(
        """
from importlib.metadata import entry_points
import sglang.srt.managers.overlap_utils as m
from support import report
[ep] = [ep for ep in entry_points(group="sglang.srt.plugins") if ep.name == "npu_compat"]
ep.load()()
report.emit(helpers=report.describe(m))
""",
        tree=tree("prefix"),
        env={**FORCED, "NPU_COMPAT_DISABLE": "1"},
    )
    assert r["helpers"] == {"_assert_nonneg_and_invalidate": "compiled", "_gather_spec_extras": "compiled"}


def test_patch_names_in_npu_compat_disable_are_case_insensitive(tree):
    # The README says values are case-insensitive: an upper-case name must
    # disable its patch, not warn "no known patch" and apply it.
    proc, r = run_py(
        """
import npu_compat
import sglang.srt.managers.overlap_utils as m
from support import report
report.emit(helpers=report.describe(m), states=report.states())
""",
        tree=tree("prefix"),
        env={**FORCED, "NPU_COMPAT_DISABLE": " OVERLAP-Gather-Spec-Extras ,Overlap-Assert-NONNEG"},
    )
    assert r["helpers"] == {"_assert_nonneg_and_invalidate": "compiled", "_gather_spec_extras": "compiled"}
    assert _overlap_states(r) == {"disabled"}
    assert "no known patch" not in proc.stderr, proc.stderr
    record_cases("settings: NPU_COMPAT_DISABLE patch names in any case", 1)


def test_disable_names_fold_case_but_an_exact_spelling_wins(monkeypatch):
    from npu_compat import _env

    known = {"overlap-x", "m:Func", "m:func"}
    monkeypatch.setenv("NPU_COMPAT_DISABLE", "OVERLAP-X, m:Func")
    assert _env.disabled(known) == (False, frozenset({"overlap-x", "m:Func"}))
    monkeypatch.setenv("NPU_COMPAT_DISABLE", "M:FUNC")  # no exact spelling: both spellings match
    assert _env.disabled(known) == (False, frozenset({"m:Func", "m:func"}))


@pytest.mark.parametrize("flag", ["-I", "-E", "-S"])
def test_children_started_with_I_E_or_S_are_not_activated(tmp_path, flag):
    # Documented limitation: -I and -E ignore PYTHONPATH (where the bootstrap
    # is), -S skips sitecustomize altogether. The control run shows the same
    # child without the flag is activated.
    env = clean_env(PYTHONPATH=npu_compat.BOOTSTRAP_DIR)
    code = "import sys; m = sys.modules.get('npu_compat'); print(bool(m and m.is_active()))"
    runs = {
        f: subprocess.run([sys.executable, *f, "-c", code], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
        for f in ((), (flag,))
    }
    assert runs[()].stdout.strip() == "True", runs[()].stderr
    assert runs[(flag,)].stdout.strip() == "False", runs[(flag,)].stderr
    record_cases("bootstrap: children started with -I, -E or -S are not activated", 1)
