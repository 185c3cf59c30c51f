"""NPU_COMPAT_REPORT's writer: never blocks, never leaves a torn line, resolves its path at activation.

Each case runs whole processes through the real path: activation on a
forced NPU, a fixture sglang module imported, the record appended at exit.
"""

import json
import os
import subprocess
import sys
import textwrap

from conftest import TESTS, clean_env, record_cases
from test_guards import make_tree

REPORT = "report file: never blocks, never leaves a torn line, path fixed at activation"

CHILD = """
import sys, npu_compat
import sglang.srt.layers.rope
"""


def child(tree, report, code="", cwd=None, timeout=60, **env):
    env = clean_env(NPU_COMPAT_DEVICE="npu", NPU_COMPAT_REPORT=str(report), **env)
    env["PYTHONPATH"] = os.pathsep.join([tree, TESTS])
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHILD) + textwrap.dedent(code)],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def warnings(proc):
    return [line for line in proc.stderr.splitlines() if "NPU_COMPAT_REPORT" in line]


def test_a_fifo_whose_reader_left_never_hangs_the_process(tmp_path):
    # `mkfifo f; cat f >> all.jsonl &`: the reader takes what comes and leaves;
    # every later process blocked for ever in its exit handler.
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    tree = make_tree(tmp_path)
    reader = subprocess.Popen([sys.executable, "-c", f"open({str(fifo)!r}).readline()"])
    try:
        first = child(tree, fifo)
    finally:
        reader.kill()
        reader.wait()
    second = child(tree, fifo)  # nobody reads now: the old writer blocked in open() here
    for proc in (first, second):
        assert proc.returncode == 0, proc.stderr
        (line,) = warnings(proc)
        assert "not a regular file" in line, proc.stderr
    record_cases(REPORT, 2)


def test_a_directory_is_refused_with_one_warning(tmp_path):
    proc = child(make_tree(tmp_path), tmp_path)
    assert proc.returncode == 0
    (line,) = warnings(proc)
    assert "not a regular file" in line


def test_past_rlimit_fsize_nothing_torn_and_the_next_line_whole(tmp_path):
    report = tmp_path / "audit.jsonl"
    report.write_text('{"earlier": 1}\n')
    tree = make_tree(tmp_path)
    # The limit (set once the activation line is in) leaves room for part of the next
    # line only; Python ignores SIGXFSZ, so the write falls short (then fails with EFBIG)
    # instead of killing it.
    limited = child(tree, report, f"""
import os, resource, signal
from npu_compat import reportfile
reportfile.flush()
assert signal.getsignal(signal.SIGXFSZ) == signal.SIG_IGN
resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize({str(report)!r}) + 40, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
""")
    assert limited.returncode == 0, limited.stderr
    (line,) = warnings(limited)
    assert "could not be written whole" in line and "nothing of it was left" in line
    before = report.read_text()
    kept = [json.loads(x) for x in before.splitlines()]
    assert before.endswith("\n") and len(kept) >= 2 and all(type(x) is dict for x in kept)
    assert not any(x.get("exit") for x in kept)  # the exit line did not fit: nothing of it is there
    after = child(tree, report)
    assert after.returncode == 0 and not warnings(after), after.stderr
    lines = report.read_text().splitlines()
    assert len(lines) >= 3 and all(type(json.loads(x)) is dict for x in lines)
    assert report.read_text().startswith(before)  # truncated back to where each failed line began
    record_cases(REPORT, 1)


def test_an_unterminated_line_left_by_someone_else_does_not_swallow_this_one(tmp_path):
    report = tmp_path / "audit.jsonl"
    report.write_text('{"earlier": 1}\n{"killed mid-wri')
    proc = child(make_tree(tmp_path), report)
    assert proc.returncode == 0 and not warnings(proc)
    lines = report.read_text().splitlines()
    assert lines[:2] == ['{"earlier": 1}', '{"killed mid-wri']
    assert json.loads(lines[2])["pid"] > 0
    record_cases(REPORT, 1)


def test_a_relative_path_is_resolved_at_activation_not_at_exit(tmp_path):
    start, later = tmp_path / "start", tmp_path / "later"
    start.mkdir()
    later.mkdir()
    proc = child(make_tree(tmp_path), "audit.jsonl", f"import os; os.chdir({str(later)!r})\n", cwd=start)
    assert proc.returncode == 0, proc.stderr
    assert not (later / "audit.jsonl").exists()
    recs = [json.loads(x) for x in (start / "audit.jsonl").read_text().splitlines()]
    assert len({r["pid"] for r in recs}) == 1 and recs[-1]["exit"] is True
    assert recs[-1]["argv"] == [sys.executable, "-c"]
    record_cases(REPORT, 1)


def test_the_line_carries_format_host_and_ranks(tmp_path):
    import socket

    report = tmp_path / "audit.jsonl"
    tree = make_tree(tmp_path)
    child(tree, report, RANK="3", LOCAL_RANK="1", WORLD_SIZE="8")
    child(tree, report, SLURM_PROCID="5", SLURM_LOCALID="2", SLURM_NTASKS="16")
    child(tree, report, RANK="not a number")
    last = {}  # each process's latest line
    for x in report.read_text().splitlines():
        rec = json.loads(x)
        last[(rec["pid"], rec["start"])] = rec
    a, b, c = last.values()
    assert a["exit"] and b["exit"] and c["exit"]
    assert a["report_format"] == 3 and a["host"] == socket.gethostname()
    assert (a["rank"], a["local_rank"], a["world_size"]) == (3, 1, 8)
    assert (b["rank"], b["local_rank"], b["world_size"]) == (5, 2, 16)
    assert (c["rank"], c["local_rank"], c["world_size"]) == (None, None, None)
    names = {p["name"] for p in a["patches"]}
    assert {"overlap-assert-nonneg", "rotary-apply-native"} <= names
    assert isinstance(a["compiles"], list) and a["compiles"]


def test_the_writer_lives_in_reportfile_only():
    from npu_compat import audit, reportfile

    for name in ("register_report", "record", "write_report", "_report_registered"):
        assert not hasattr(audit, name) and hasattr(reportfile, name)


def test_write_report_without_a_path_is_a_no_op(monkeypatch):
    from npu_compat import reportfile

    monkeypatch.delenv("NPU_COMPAT_REPORT", raising=False)
    monkeypatch.setattr(reportfile, "_report_registered", None)
    assert reportfile.write_report() is False
