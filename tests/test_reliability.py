"""A shim that runs in every process must never be the thing that breaks it.

Each property test records how many cases it ran (printed at the end of the
run under "reliability figures").
"""

import os
import subprocess
import sys

import pytest
from conftest import TESTS, clean_env, record_cases, run_py
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npu_compat import _env, _log, cli

FORCED = {"NPU_COMPAT_DEVICE": "npu"}
OURS = {"_assert_nonneg_and_invalidate": "ours", "_gather_spec_extras": "ours"}


def warnings_in(stderr):
    return [line for line in stderr.splitlines() if "npu_compat" in line and "Traceback" not in line]


# --- 1. status is the truth -------------------------------------------------------


def test_status_reads_the_live_module_and_deactivate_spares_a_later_replacement(tree):
    _, r = run_py(
        """
import npu_compat
import sglang.srt.managers.overlap_utils as m
from support import report
seen = [report.states()]
def theirs(indices, topk_p_buf, topk_index_buf, output_tokens_buf, hidden_states_buf):
    return "theirs"
m._gather_spec_extras = theirs  # someone else patches after npu_compat
st = {s.name: (s.state, s.installed) for s in npu_compat.status()}
npu_compat.deactivate()
report.emit(seen=seen, st=st, kept=m._gather_spec_extras is theirs, other=report.describe(m)["_assert_nonneg_and_invalidate"])
""",
        tree=tree("prefix"),
        env=FORCED,
    )
    assert r["seen"] == [{"overlap-assert-nonneg": "applied", "overlap-gather-spec-extras": "applied"}]
    assert r["st"]["overlap-gather-spec-extras"][0] == "replaced"
    assert "theirs" in r["st"]["overlap-gather-spec-extras"][1]
    assert r["st"]["overlap-assert-nonneg"][0] == "applied"
    assert r["kept"] is True  # deactivate did not clobber their object
    assert r["other"] == "compiled"  # ...and restored what was still ours
    record_cases("status is the truth (replaced after patching)", 1)


# --- 2. concurrency ---------------------------------------------------------------

CONCURRENCY = """
import importlib, random, sys, threading
import npu_compat
from support import report
import sglang.srt.managers  # the package is loaded; the target is imported by the threads
TARGET = "sglang.srt.managers.overlap_utils"
reps, threads_n = int(sys.argv[1]), 16
random.seed(1)
bad, errors, outcomes = [], [], {"ours": 0, "upstream": 0}
for rep in range(reps):
    npu_compat.deactivate()
    sys.modules.pop(TARGET, None)
    end_off = rep % 2 == 1  # odd repetitions end deactivated
    barrier = threading.Barrier(threads_n + 1)
    def importer():
        try:
            barrier.wait(10)
            importlib.import_module(TARGET)
        except BaseException as exc:
            errors.append(repr(exc))
    def toggler():
        try:
            barrier.wait(10)
            for op in ["activate", "deactivate", "activate"] + (["deactivate"] if end_off else []):
                if random.random() < 0.5:
                    threading.Event().wait(random.random() / 2000)
                getattr(npu_compat, op)()
        except BaseException as exc:
            errors.append(repr(exc))
    ts = [threading.Thread(target=importer) for _ in range(threads_n)] + [threading.Thread(target=toggler)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    if any(t.is_alive() for t in ts):
        report.emit(deadlock=rep)
        sys.stdout.flush()
        import os; os._exit(3)
    from npu_compat import core
    if not core.settle(30):  # an import that raced the activation is evaluated by a waiter thread
        report.emit(deadlock=rep, waiter=True)
        sys.stdout.flush()
        import os; os._exit(3)
    m = sys.modules[TARGET]
    helpers = set(report.describe(m).values())
    states = set(report.states().values())
    want = ({"compiled"}, {"inactive"}) if end_off else ({"ours"}, {"applied"})
    if (helpers, states) != want:
        bad.append((rep, sorted(helpers), sorted(states)))
    outcomes["upstream" if end_off else "ours"] += 1
report.emit(bad=bad, errors=errors, outcomes=outcomes, reps=reps)
"""


def test_sixteen_importers_against_activate_deactivate_activate(tree):
    proc, r = run_py(CONCURRENCY, tree=tree("light"), env=FORCED, args=["1000"], timeout=600)
    assert "deadlock" not in r, r
    assert r["errors"] == []
    assert r["bad"] == []
    assert r["outcomes"] == {"ours": 500, "upstream": 500}
    assert "Traceback" not in proc.stderr
    record_cases("concurrency: 16 importing threads vs activate/deactivate/activate", r["reps"])


# --- 3. faults degrade, never crash -------------------------------------------------

FAULTS = {
    # name: (code run before importing the target, expected states, the reason's words)
    "torch-import-fails": (
        "sys.modules['torch'] = None",
        {"overlap-assert-nonneg": "failed", "overlap-gather-spec-extras": "failed"},
        "torch",
    ),
    "wrapt-missing": (
        "sys.modules['wrapt'] = None",
        {"overlap-assert-nonneg": "failed", "overlap-gather-spec-extras": "failed"},
        "wrapt cannot be imported",
    ),
    "is-available-raises": (
        "from support import fake_npu; fake_npu.install(raises=RuntimeError('no device'))",
        {"overlap-assert-nonneg": "not-needed", "overlap-gather-spec-extras": "not-needed"},
        "is_available() raised RuntimeError",
    ),
    "read-only-attribute": (
        "import types\n"
        "class RO(types.ModuleType):\n"
        "    def __setattr__(self, k, v):\n"
        "        if k.startswith('_') and k in ('_assert_nonneg_and_invalidate', '_gather_spec_extras') and k in self.__dict__:\n"
        "            raise AttributeError(f'{k} is read-only')\n"
        "        super().__setattr__(k, v)\n"
        "import importlib.abc\n"
        "class MakeRO(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'sglang.srt.managers.overlap_utils':\n"
        "            from importlib.machinery import PathFinder\n"
        "            spec = PathFinder.find_spec(name, path)\n"
        "            real = spec.loader\n"
        "            class L(importlib.abc.Loader):\n"
        "                def create_module(self, spec): return RO(spec.name)\n"
        "                def exec_module(self, module): real.exec_module(module)\n"
        "            spec.loader = L()\n"
        "            return spec\n"
        "sys.meta_path.insert(0, MakeRO())",
        {"overlap-assert-nonneg": "failed", "overlap-gather-spec-extras": "failed"},
        "read-only",
    ),
    "bad-registry-record": (
        "import types, npu_compat.registry as reg\n"
        "bad = types.ModuleType('npu_compat.patches.bad'); bad.PATCHES = ('not a record',)\n"
        "sys.modules['npu_compat.patches.bad'] = bad\n"
        "sys.modules['npu_compat.patches.gone'] = None\n"
        "reg.PATCH_MODULES = reg.PATCH_MODULES + ('bad', 'gone')\n"
        "reg._loaded = None  # as if the registry had them from the start (activation read it already)",
        {"overlap-assert-nonneg": "applied", "overlap-gather-spec-extras": "applied"},
        "is not a Patch",
    ),
}

FAULT_CODE = """
import sys, logging
{inject}
import npu_compat
from support import report
try:
    import sglang.srt.managers.overlap_utils as m
    err = None
except npu_compat.NpuCompatError as exc:
    err = str(exc)
    m = None
report.emit(err=err, states=report.states(), reasons=[s.reason for s in npu_compat.status()],
            helpers=report.describe(m) if m else None, registry=npu_compat.report()["registry_errors"])
"""


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("strict", [False, True], ids=["lenient", "strict"])
def test_each_fault_degrades_to_a_state_with_a_reason(tree, fault, strict):
    inject, states, words = FAULTS[fault]
    env = dict(FORCED) if fault != "is-available-raises" else {}
    if strict:
        env["NPU_COMPAT_STRICT"] = "1"
    proc, r = run_py(FAULT_CODE.format(inject=inject), tree=tree("light"), env=env)
    raising = strict and "failed" in states.values() or (strict and fault == "bad-registry-record")
    if raising:
        # one clear error instead, naming the cause; nothing half-applied
        assert r["err"] is not None and "NPU_COMPAT_STRICT=1" in r["err"]
        assert words in r["err"] or fault == "torch-import-fails"
        assert r["helpers"] is None
    else:
        assert r["err"] is None
        assert r["states"] == states
        assert any(words in reason for reason in r["reasons"] + r["registry"]), r
        if "failed" in states.values():
            # nothing half-applied: the module still holds upstream's objects
            assert set(r["helpers"].values()) == {"compiled"}
        expected_warnings = {"is-available-raises": 0, "wrapt-missing": 1, "bad-registry-record": 2}.get(fault, 2)
        assert len(warnings_in(proc.stderr)) == expected_warnings, proc.stderr
    assert "Traceback" not in proc.stderr
    record_cases("faults degrade (strict raises)" if strict else "faults degrade", 1)


# --- 4. bad input -------------------------------------------------------------------

env_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=300)
nasty = st.one_of(
    env_text,
    st.sampled_from(["", " ", "\t\n", "1", " TRUE ", "npu", "NPU ", "cpu", "auto", "é", "\u202e1", "x" * 100_000]),
)

_count = {}


def _reset_warnings():
    _log._said.clear()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(device=nasty, strict=nasty, disable=nasty)
def test_env_values_never_raise_and_warn_at_most_once(monkeypatch, caplog, device, strict, disable):
    _reset_warnings()
    monkeypatch.setenv("NPU_COMPAT_DEVICE", device)
    monkeypatch.setenv("NPU_COMPAT_STRICT", strict)
    monkeypatch.setenv("NPU_COMPAT_DISABLE", disable)
    known = {"overlap-assert-nonneg", "overlap-gather-spec-extras"}
    caplog.clear()
    for _ in range(3):  # read repeatedly, as the hook and status do
        dev = _env.device()
        flag = _env.strict()
        off, names = _env.disabled(known)
    # documented meanings
    d = device.strip().lower()
    if d == "npu":
        assert dev == "npu"
    elif d in ("", "auto"):
        assert dev == "auto"
    elif d in _env.OTHER_DEVICES:
        assert dev == "other:" + d
    else:
        assert dev == "auto"
    assert flag == (strict.strip().lower() in _env.TRUE)
    assert off == (disable.strip().lower() in _env.DISABLE_ALL)
    assert names <= known
    per_var = {}
    for rec in caplog.records:
        assert rec.levelname == "WARNING" and rec.name == "npu_compat"
        assert len(rec.getMessage()) < 1000 and "\n" not in rec.getMessage()
        var = rec.getMessage().split("=", 1)[0].split()[0]
        per_var[var] = per_var.get(var, 0) + 1
    assert all(n == 1 for n in per_var.values()), per_var
    record_cases("bad input: NPU_COMPAT_* values (hypothesis)", 1)


def test_import_with_nasty_environment_values(tree):
    values = ["", " ", "\u00e9\u202e", "1,2,3", "x" * 100_000, "npu; rm -rf /", "os.system", "../../etc"]
    for v in values:
        env = {"NPU_COMPAT_DEVICE": v, "NPU_COMPAT_STRICT": v, "NPU_COMPAT_DISABLE": v}
        proc, r = run_py(
            "import npu_compat, sglang.srt.managers.overlap_utils as m\nfrom support import report\n"
            "report.emit(states=report.states())",
            tree=tree("light"),
            env=env,
        )
        assert proc.returncode == 0 and "Traceback" not in proc.stderr
        assert all(len(line) < 1000 for line in proc.stderr.splitlines())
    record_cases("bad input: whole-process imports with nasty values", len(values))


argv_token = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=st.sampled_from(["status", "bootstrap-path", "install", "uninstall", "bogus", "--bogus", "-x"]),
       extra=st.lists(argv_token.filter(lambda t: t.startswith("-") or t == "" or not t.isidentifier()), min_size=1, max_size=3))  # fmt: skip
def test_cli_bad_arguments_exit_2_with_one_line(tmp_path_factory, capsys, command, extra):
    site = tmp_path_factory.mktemp("site")
    argv = [command] + extra
    if command in ("install", "uninstall"):
        argv = [command, "--site-dir", str(site)] + extra
    rc = cli.main(argv) if "--help" not in extra and "-h" not in extra else 0
    out, errs = capsys.readouterr()
    if rc != 0:
        assert rc in (1, 2)
        assert "Traceback" not in errs and len(errs.strip().splitlines()) == 1, (argv, errs)
    record_cases("bad input: CLI argument lists (hypothesis)", 1)


def test_cli_unknown_options_exit_2_per_command():
    for argv in (["--nope"], ["status", "--nope"], ["install", "--nope"], ["uninstall", "--frobnicate"],
                 ["bootstrap-path", "x"], ["scan", "--nope"], ["status", "--json", "extra"], ["nope"]):  # fmt: skip
        proc = subprocess.run(
            [sys.executable, "-m", "npu_compat", *argv], env=clean_env(), capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 2, (argv, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, (argv, proc.stderr)
    record_cases("bad input: unknown CLI options per command", 8)


# --- 6. nothing from outside is imported ---------------------------------------------


def test_no_setting_makes_npu_compat_import_anything_else(tree, tmp_path):
    evil = tmp_path / "evil"
    evil.mkdir()
    mark = tmp_path / "imported"
    for name in ("evil_mod", "npu_compat_evil"):
        (evil / f"{name}.py").write_text(f"open({str(mark)!r}, 'a').write('{name}\\n')\n")
    tried = 0
    for v in ("evil_mod", "npu_compat_evil", "evil_mod:load", "npu_compat.patches.evil_mod", "../evil/evil_mod.py"):
        env = {"NPU_COMPAT_DEVICE": v, "NPU_COMPAT_STRICT": v, "NPU_COMPAT_DISABLE": v, "NPU_COMPAT_ORIGIN": v}
        run_py(
            "import npu_compat, sglang.srt.managers.overlap_utils\nfrom npu_compat.cli import main\n"
            "main(['status', '--json']); from support import report; report.emit(ok=1)",
            tree=tree("light"),
            env={**env, "PYTHONPATH": str(evil)},
        )
        tried += 1
    assert not mark.exists(), mark.read_text()
    record_cases("no outside code: settings naming modules", tried)


# --- the import system's own lock ---------------------------------------------------

LOCK_RACE = """
import os, sys, threading, time
import npu_compat
from support import report
delay = float(sys.argv[1])
done = {}
def target():
    time.sleep(delay)
    import sglang.srt.managers.overlap_utils
    done["target"] = True
def other():
    import wrapt  # another library importing wrapt (or inspect, ast, ...) at the same moment
    done["other"] = True
ts = [threading.Thread(target=other, daemon=True), threading.Thread(target=target, daemon=True)]
for t in ts:
    t.start()
for t in ts:
    t.join(20)
report.emit(hung=any(t.is_alive() for t in ts), done=sorted(done), states=report.states())
os._exit(0)
"""


@pytest.mark.parametrize("delay", [0, 0.001, 0.003, 0.01])
def test_no_deadlock_when_another_thread_imports_what_npu_compat_needs(tree, delay):
    # Finders run under Python's global import lock: npu_compat imports and
    # waits only once sglang executes, never inside its finder.
    _, r = run_py(LOCK_RACE, tree=tree("light"), env=FORCED, args=[str(delay)], timeout=120)
    assert r["hung"] is False
    assert r["done"] == ["other", "target"]
    assert set(r["states"].values()) == {"applied"}
    record_cases("no deadlock: a thread importing wrapt while sglang loads", 1)


def test_looking_sglang_up_imports_nothing_and_arms_nothing(tree):
    _, r = run_py(
        """
import importlib.util, sys
import npu_compat
from support import report
spec = importlib.util.find_spec("sglang")
probe = {"wrapt": "wrapt" in sys.modules, "core": "npu_compat.core" in sys.modules, "found": spec is not None}
import sglang.srt.managers.overlap_utils as m
report.emit(probe=probe, helpers=report.describe(m), loader=type(sys.modules["sglang"].__loader__).__name__)
""",
        tree=tree("light"),
        env=FORCED,
    )
    assert r["probe"] == {"wrapt": False, "core": False, "found": True}
    assert r["helpers"] == OURS  # the later real import is still caught
    assert r["loader"] == "SourceFileLoader"  # the real loader is handed back


def test_a_not_npu_answer_before_torch_npu_loads_is_not_kept(tree):
    # torch < 2.5 does not autoload torch_npu: an early is_npu() must not stick.
    _, r = run_py(
        """
import npu_compat
from support import fake_npu, report
early = npu_compat.is_npu()
fake_npu.install()  # what `import torch_npu` does
import sglang.srt.managers.overlap_utils as m
report.emit(early=early, helpers=report.describe(m), states=report.states())
""",
        tree=tree("prefix"),
    )
    assert r["early"] is False
    assert r["helpers"] == OURS and set(r["states"].values()) == {"applied"}


def test_status_keeps_reporting_an_applied_patch_after_the_setting_changes(tree):
    _, r = run_py(
        """
import os
import npu_compat
import sglang.srt.managers.overlap_utils as m
from support import report
os.environ["NPU_COMPAT_DISABLE"] = "1"  # set after the fact: the module is still patched
report.emit(states=report.states(), helpers=report.describe(m))
""",
        tree=tree("light"),
        env=FORCED,
    )
    assert r["helpers"] == OURS and set(r["states"].values()) == {"applied"}
