"""NPU_COMPAT_REPORT as things happen: a process killed the way sglang kills its
schedulers (SIGKILL, or SIGTERM with Python's default handler) still shows what
it compiled and what fell back; a running process's report is current; many
writers at once never tear a line or lose an event; the report file cannot be
turned against its writer (a link, its mode, secrets on the command line) or its
readers (a forged line).
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import ROOT, TESTS, clean_env
from test_fallback import NPU, make_tree
from test_real_sglang import needs_sglang, sglang_python  # noqa: F401 - needs_sglang's condition reads it

from npu_compat import audit as npu_audit
from npu_compat import auditview

SITE = "sglang.srt.layers.ops:scale"

# Falls back (dynamo's own failure on the simulated NPU), says when, then waits to be ended.
FALLS_BACK = NPU + """
import sys, time, torch, npu_compat
import sglang.srt.layers.ops as ops
ops.scale(torch.arange(4.))
print("FELL", time.time(), flush=True)
time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 600)
"""


def start(code, tree, report, *args, **env):
    env = clean_env(NPU_COMPAT_REPORT=str(report), **env)
    env["PYTHONPATH"] = os.pathsep.join([str(tree), TESTS, ROOT])
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def lines_of(report):
    try:
        return [json.loads(x) for x in open(report).read().splitlines() if x.strip()]
    except FileNotFoundError:
        return []


def fell_back_line(report, pid):
    """The first line of ``pid`` that records SITE's fallback, or None."""
    for rec in lines_of(report):
        if rec.get("pid") == pid and any(c["site"] == SITE and c["fell_back"] for c in rec["compiles"]):
            return rec
    return None


def wait_for(fn, deadline_s=120, what="the report line"):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        got = fn()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"no {what} within {deadline_s} s")


def run_audit(*args, **env):
    proc = subprocess.run([sys.executable, "-m", "npu_compat", "audit", *map(str, args)],
                          env=clean_env(PYTHONPATH=ROOT, **env), capture_output=True, text=True, timeout=120)  # fmt: skip
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_process_killed_after_a_fallback_is_counted_with_it(tmp_path, sig):
    report = tmp_path / "npu.jsonl"
    p = start(FALLS_BACK, make_tree(tmp_path), report)
    try:
        wait_for(lambda: fell_back_line(report, p.pid))
    finally:
        p.send_signal(sig)  # no exit handler runs: sglang's kill_process_tree, a pod's stop
        out, err = p.communicate(timeout=60)
    assert p.returncode == -sig, err
    assert not any(r["exit"] for r in lines_of(report))  # no exit line: what the audit shows came before
    rc, text, err = run_audit("--json", report)
    assert rc == 0, err
    got = json.loads(text)
    assert got["processes"] == 1 and got["not_exited"] == 1
    (proc,) = got["process_list"]
    assert proc["pid"] == p.pid and proc["exit"] is False and proc["lines"] >= 2
    (site,) = [s for s in got["sites"] if s["site"] == SITE]
    assert site["fell_back"] == 1 and site["eager_by"]["fallback"] == 1
    assert run_audit("--fail-on", "fell-back", report)[0] == 1


def test_a_running_processes_fallback_is_in_the_report_within_a_second(tmp_path):
    report = tmp_path / "npu.jsonl"
    p = start(FALLS_BACK, make_tree(tmp_path), report, 600)
    try:
        fell_at = float(wait_for(lambda: p.stdout.readline().split()[1:2], what="FELL")[0])
        rec = wait_for(lambda: fell_back_line(report, p.pid))
        # the writer's own time stamp: its delay, not this poll's
        assert rec["time"] - fell_at < 1.0, rec["time"] - fell_at
        assert rec["exit"] is False and p.poll() is None  # still running
        rc, text, _ = run_audit("--json", report)
        assert rc == 0 and json.loads(text)["not_exited"] == 1
    finally:
        p.kill()
        p.communicate(timeout=60)


# sglang's launcher, cut down: in the real-sglang venv (0.5.23 tree), it starts schedulers on the simulated NPU
# (each falls back, then serves), watches the report until each one's fallback is there, and ends them the
# way sglang does: its own kill_process_tree, psutil's child.kill() (SIGKILL) on every child.
LAUNCHER = """
import json, os, subprocess, sys, time
report, logs, n, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
env = dict(os.environ, PYTHONPATH=path)
kids = [subprocess.Popen([sys.executable, "-c", CHILD], env=env, stdout=open(f"{logs}/{i}.out", "w"),
                         stderr=open(f"{logs}/{i}.err", "w")) for i in range(n)]
def fell(pid):
    try:
        lines = open(report).read().splitlines()
    except FileNotFoundError:
        return False
    for x in lines:
        try:
            rec = json.loads(x)
        except ValueError:
            continue
        if rec.get("pid") == pid and any(c["site"] == SITE and c["fell_back"] for c in rec["compiles"]):
            return True
    return False
def printed(i):
    return "FELL" in open(f"{logs}/{i}.out").read()
def wait(ok, deadline_s):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end and not ok():
        time.sleep(0.1)
    return ok()
# each child says when it fell back (generous: two busy cores), then its line must follow: the writer's
# delay is under a second; a report written only at exit never has it
try:
    from sglang.srt.utils.common import kill_process_tree   # only this module (~45 of sglang's), no scheduler
    wait(lambda: all(printed(i) or k.poll() is not None for i, k in enumerate(kids)), 300)
    wait(lambda: all(fell(k.pid) for k in kids), 30)
    out = {"pids": [k.pid for k in kids], "printed": [printed(i) for i in range(n)],
           "in_report": [fell(k.pid) for k in kids], "running": [k.poll() is None for k in kids]}
    kill_process_tree(os.getpid(), include_parent=False)    # sglang's own: SIGKILL, waits for the reap
    out["returncodes"] = [k.wait(timeout=60) for k in kids]
finally:
    for k in kids:
        if k.poll() is None:    # the launcher failed before its kill: leave no child behind
            k.kill()
print("RESULT:" + json.dumps(out), flush=True)
"""


@needs_sglang
def test_schedulers_ended_by_sglangs_kill_process_tree_are_counted_with_their_fallbacks(tmp_path):
    """The issue's real case: sglang 0.5.23's kill_process_tree ends a process tree whose children fell back on
    the (simulated) NPU; the audit counts each child once, with its fallback, as killed; the table fits 80."""
    n = 2
    report, logs = tmp_path / "npu.jsonl", tmp_path / "logs"
    logs.mkdir()
    py = sglang_python()
    sglang_0_5_23 = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(py))), "sglang-0.5.23")
    # the launcher: this checkout first (the venv's editable npu_compat may be another), 0.5.23, tests/;
    # its children: the fixture's sglang-shaped tree instead of 0.5.23, then this checkout
    code = f"CHILD = {textwrap.dedent(FALLS_BACK)!r}\nSITE = {SITE!r}\n" + textwrap.dedent(LAUNCHER)
    env = clean_env(PYTHONPATH=os.pathsep.join([ROOT, sglang_0_5_23, TESTS]), NPU_COMPAT_REPORT=str(report))
    child_path = os.pathsep.join([make_tree(tmp_path), ROOT, TESTS])
    proc = subprocess.run([py, "-c", code, *map(str, (report, logs, n, child_path))], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    got = [json.loads(x[len("RESULT:") :]) for x in proc.stdout.splitlines() if x.startswith("RESULT:")]
    kids = "".join(f"\n--- child {f.name}:\n{f.read_text()[-3000:]}" for f in sorted(logs.iterdir()))
    assert proc.returncode == 0 and got, f"rc={proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}{kids}"
    r = got[0]
    assert r["printed"] == [True] * n and r["running"] == [True] * n, (r, kids)
    assert r["in_report"] == [True] * n, ("a running child's fallback is not in the report", r, kids)
    assert r["returncodes"] == [-signal.SIGKILL] * n, r  # killed: no exit handler ran
    recs = lines_of(report)
    assert {x["pid"] for x in recs} == set(r["pids"])  # the launcher (not on NPU) writes nothing
    assert not any(x["exit"] for x in recs)

    rc, text, err = run_audit("--json", report)
    assert rc == 0, err
    audit = json.loads(text)
    assert audit["processes"] == n and audit["not_exited"] == n, audit
    assert sorted(p["pid"] for p in audit["process_list"]) == sorted(r["pids"])  # each child once
    assert all(p["exit"] is False and p["lines"] >= 2 for p in audit["process_list"])
    (site,) = [s for s in audit["sites"] if s["site"] == SITE]
    assert site["processes"] == n and site["fell_back"] == n and site["eager_by"]["fallback"] == n, site

    rc, table, err = run_audit(report, COLUMNS="80")
    assert rc == 0, err
    assert f"{n} processes on 1 host(s)" in table and f"{n} of them without an exit line" in table, table
    assert max(map(len, table.splitlines())) <= 80, table


WRITER = """
import os, sys, time
from npu_compat import reportfile
n, pad = int(sys.argv[1]), int(sys.argv[2])
done = []
def state():
    return {"npu_compat": "test", "route": "import", "patches": [],
            "compiles": [{"site": f"sglang.ev:e{i}", "target": f"sglang.ev.e{i}", "where": "sglang.ev:<module>:1",
                          "backend": "inductor", "eager": False, "eager_by": None, "why": "x" * pad,
                          "called": True, "fell_back": None} for i in done]}
assert reportfile.register_report(state)
for i in range(n):
    done.append(i)
    reportfile.changed()
    if i % 3 == 0:
        reportfile.flush()       # some lines written at once, by this thread, against the writer thread
    time.sleep(0.01 * (os.getpid() % 5))
"""


def test_eight_writers_at_once_no_torn_line_no_lost_event_and_a_reused_pid_is_two(tmp_path):
    report = tmp_path / "npu.jsonl"
    n = 24
    env = clean_env(NPU_COMPAT_REPORT=str(report), NPU_COMPAT_DISABLE="1", PYTHONPATH=ROOT)
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(n), "3000"], env=env, stderr=subprocess.PIPE,
                              text=True) for _ in range(8)]  # fmt: skip
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, errs
    raw = report.read_bytes()
    assert raw.endswith(b"\n")
    recs = [json.loads(x) for x in raw.splitlines()]  # every line whole
    assert len(recs) > 8 * 3 and max(len(x) for x in raw.splitlines()) > 64 * 1024  # far over PIPE_BUF
    by_pid = {}
    for r in recs:
        by_pid.setdefault(r["pid"], []).append(r)
    assert sorted(by_pid) == sorted(p.pid for p in procs)
    for pid, mine in by_pid.items():
        assert [r["seq"] for r in mine] == list(range(1, len(mine) + 1))  # in order, none lost
        assert mine[-1]["exit"] is True and len(mine[-1]["compiles"]) == n
        assert os.stat(report).st_mode & 0o777 == 0o600
    # a later process with the same pid (pids are reused) is another process: same host and pid, new start
    reused = dict(by_pid[procs[0].pid][0], start=by_pid[procs[0].pid][0]["start"] + 3600, seq=1, exit=False)
    with open(report, "a") as f:
        f.write(json.dumps(reused) + "\n")
    rc, text, err = run_audit("--json", report)
    assert rc == 0, err
    got = json.loads(text)
    assert got["processes"] == 9 and got["not_exited"] == 1
    sites = {s["site"]: s for s in got["sites"]}
    assert all(sites[f"sglang.ev:e{i}"]["processes"] >= 8 and sites[f"sglang.ev:e{i}"]["called"] >= 8
               for i in range(n))  # fmt: skip
    assert sites["sglang.ev:e0"]["processes"] == 9


# --- the four review cases -----------------------------------------------------------------


def test_a_symlink_is_never_followed(tmp_path):
    victim = tmp_path / "root-only"
    victim.write_text("secret\n")
    os.chmod(victim, 0o600)
    link = tmp_path / "npu.jsonl"
    os.symlink(victim, link)
    p = start(FALLS_BACK, make_tree(tmp_path), link, 0)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert victim.read_text() == "secret\n"
    warned = [x for x in err.splitlines() if "NPU_COMPAT_REPORT" in x]
    assert len(warned) == 1 and "symbolic link" in warned[0] and str(link) in warned[0], err


def test_a_created_report_is_0600_an_existing_keeps_its_mode_and_no_option_value_is_recorded(tmp_path):
    tree = make_tree(tmp_path)
    new, shared = tmp_path / "new.jsonl", tmp_path / "shared.jsonl"
    shared.write_text("")
    os.chmod(shared, 0o640)
    for report in (new, shared):
        p = start(FALLS_BACK, tree, report, 0, "--api-key", "sk-SECRET-123")
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert new.stat().st_mode & 0o777 == 0o600
    assert shared.stat().st_mode & 0o777 == 0o640
    for report in (new, shared):
        text = report.read_text()
        assert "sk-SECRET" not in text and "--api-key" not in text
        assert {tuple(r["argv"]) for r in lines_of(report)} == {(sys.executable, "-c")}


def test_program_keeps_the_entry_only(monkeypatch):
    from npu_compat import reportfile

    for argv, want in [
        (["python3", "-X", "utf8", "-m", "sglang.launch_server", "--api-key", "s"], ["python3", "-m", "sglang.launch_server"]),
        (["python3", "-msglang.launch_server", "--api-key=s"], ["python3", "-m", "sglang.launch_server"]),
        (["python3", "-W", "ignore", "serve.py", "--api-key", "s"], ["python3", "serve.py"]),
        (["python3", "-c", "code", "--api-key", "s"], ["python3", "-c"]),
    ]:  # fmt: skip
        monkeypatch.setattr(sys, "orig_argv", argv)
        assert reportfile.program() == want


FORGED = {
    "site": "sglang.srt.layers.ops:scale\nall",
    "type": "RuntimeError\neverything",
    "stage": "first run\nall",
}


def _line(pid, compiles, **extra):
    rec = {"report_format": 3, "npu_compat": "x", "pid": pid, "ppid": 1, "start": 1.0, "seq": 1, "exit": True,
           "time": 2.0, "argv": ["python"], "route": "import", "host": "h", "rank": None, "local_rank": None,
           "world_size": None, "patches": [], "compiles": compiles}  # fmt: skip
    rec.update(extra)
    return json.dumps(rec)


def _entry(site, **kw):
    out = {"site": site, "target": str(site).replace(":", "."), "where": "w", "backend": "inductor", "eager": True,
           "eager_by": "fallback", "why": "fell back", "called": None, "when": "at definition",
           "fell_back": {"stage": "compile", "type": "GeError", "message": "m"}}  # fmt: skip
    out.update(kw)
    return out


def test_a_forged_line_never_makes_the_eager_list_say_all(tmp_path):
    report = tmp_path / "npu.jsonl"
    good = "sglang.srt.layers.good:fn"
    with open(report, "w") as f:
        f.write(_line(1, [_entry(good)]) + "\n")
        f.write(_line(2, [_entry(FORGED["site"])]) + "\n")
        f.write(_line(3, [_entry("sglang.x:f", fell_back={"stage": FORGED["stage"], "type": FORGED["type"],
                                                            "message": "a\nall"})]) + "\n")  # fmt: skip
        f.write(_line(4, [_entry("all")]) + "\n")  # no module:qualname at all: a comment
        f.write(_line(5, [_entry("sglang.a:b c")]) + "\n")  # printable, but not a site
    rc, listing, err = run_audit("--eager-list", report)
    assert rc == 0, err
    pinned = [x for x in listing.splitlines() if x.strip() and not x.lstrip().startswith("#")]
    assert sorted(pinned) == [good, "sglang.x:f"], listing
    assert "left out 'sglang.a:b c'" in err and "compiles[0].site holds control characters" in err
    # and a list file that says all / everything: only sites and guard names are taken from a file
    eager = tmp_path / "eager.txt"
    eager.write_text(listing + "\nall\neverything\n* \n")
    s = npu_audit.read_lists(npu_audit.Setting(files=[str(eager)]), {"rotary-apply-native"}, ("sglang",))
    assert s.mode is None and s.everything is False
    assert s.sites == {("sglang.srt.layers.good", "fn"), ("sglang.x", "f")}


BAD_LINES = [
    b"[" * 200_000 + b"]" * 200_000,  # deep nesting: RecursionError in json
    b'{"report_format": 3, "pid": ' + b"9" * 5000 + b"}",  # a huge number
    _line(5, [], start=float("nan")).encode(),  # NaN
    _line(6, [], time=1e999).encode().replace(b"Infinity", b"1e999"),  # inf from a huge float
    b'{"compiles": [], "host": "\xff\xfe"}',  # invalid UTF-8
    b"[1, 2, 3]",  # not an object
    b'"just a string"',
    _line("7", []).encode(),  # pid a string
    _line(8, [1, 2]).encode(),  # an entry not an object
    _line(9, [_entry(5)]).encode(),  # site not a string
    _line(10, [_entry("sglang.a:b", fell_back="boom")]).encode(),
    _line(11, [], patches=[{"name": ["x"]}]).encode(),
    _line(12, [], seq=True).encode(),
    _line(13, [], host="h\nall").encode(),
]


def test_any_bad_line_is_named_and_skipped_and_the_merge_goes_on(tmp_path):
    report = tmp_path / "npu.jsonl"
    with open(report, "wb") as f:
        f.write(_line(1, [_entry("sglang.srt.layers.good:fn")]).encode() + b"\n")
        for raw in BAD_LINES:
            f.write(raw + b"\n")
        f.write(_line(2, [_entry("sglang.srt.layers.good:fn")], start=5.0).encode() + b"\n")
    rc, text, err = run_audit("--json", report)
    assert rc == 0 and "Traceback" not in err, err
    got = json.loads(text)
    assert got["processes"] == 2 and got["bad_lines"] == len(BAD_LINES), got["bad"]
    assert all(f"{report}:{n}:" in b for n, b in zip(range(2, 2 + len(BAD_LINES)), got["bad"]))
    assert "nested too deep" in got["bad"][0]
    rc, table, err = run_audit(report)
    assert rc == 0 and "2 processes on 1 host(s)" in table
    # scan --from-audit reads through the same code
    from npu_compat.scan import patch

    warned = []
    (want,) = patch.audit_wants([str(report)], warned.append)
    assert (want.module, want.qualname) == ("sglang.srt.layers.good", "fn") and len(warned) == 5


def test_the_table_fits_80_columns_with_long_names_in_full_in_json(tmp_path):
    long_site = "sglang.srt.layers.moe.moe_runner.triton_utils.fused_moe_very_long_module:_swiglu_silu_clamp_mul_x"
    closure = "sglang.srt.layers.rotary_embedding.utils:RotaryEmbedding.forward"
    report = tmp_path / "npu.jsonl"
    with open(report, "w") as f:
        f.write(_line(1, [_entry(long_site, backend="unknown (compiled before npu_compat watched)"),
                          _entry(closure, target=closure.replace(":", ".") + ".<locals>.inner_function_name")],
                      rank=3) + "\n")  # fmt: skip
    rc, table, err = run_audit(report)
    assert rc == 0, err
    assert max(map(len, table.splitlines())) <= 80, table
    assert "...moe_runner.triton_utils.fused_moe_very_long_module:_swiglu_silu_clamp_mul_x" in table.splitlines()
    sites = {s["site"] for s in json.loads(run_audit("--json", report)[1])["sites"]}
    assert long_site in sites and closure in sites


def test_reportfile_does_not_import_core():
    import ast

    tree = ast.parse(open(os.path.join(ROOT, "npu_compat", "reportfile.py")).read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    assert not any(n.startswith(("npu_compat.core", "npu_compat.audit", "npu_compat.intercept")) or n == "npu_compat"
                   for n in names), names  # fmt: skip
    assert auditview.well_formed_site("a.b:c.d") and not auditview.well_formed_site("a:b\nall")
