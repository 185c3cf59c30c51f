"""NPU_COMPAT_LOG_LEVEL: npu_compat's decisions on stderr in a process that never configured logging."""

import re

from conftest import run_py

SAY = """
import sys
from npu_compat import _log
from support import report
_log.debug("npu_compat: a debug line")
_log.info("npu_compat: an info line")
_log.warning("npu_compat: a warning line")
report.emit(logging="logging" in sys.modules)
"""


def lines(proc):
    return [line for line in proc.stderr.splitlines() if line.strip()]


def test_unset_shows_only_warnings_and_debug_does_not_import_logging():
    proc, _ = run_py(
        "import sys\nfrom npu_compat import _log\nfrom support import report\n"
        "_log.debug('npu_compat: a debug line')\nreport.emit(logging='logging' in sys.modules)"
    )
    assert lines(proc) == [] and '"logging": false' in proc.stdout
    proc, r = run_py(SAY)
    assert lines(proc) == ["npu_compat: a warning line"]  # logging's last resort, as without the setting


def test_debug_shows_every_line_once_with_the_pid():
    proc, r = run_py(SAY, env={"NPU_COMPAT_LOG_LEVEL": " DEBUG "})
    out = lines(proc)
    assert len(out) == 3, out
    for line, level, text in zip(out, ("DEBUG", "INFO", "WARNING"), ("a debug", "an info", "a warning")):
        assert re.fullmatch(rf"npu_compat {level} \[pid \d+\] {text} line", line), line


def test_a_level_hides_what_is_below_it():
    proc, _ = run_py(SAY, env={"NPU_COMPAT_LOG_LEVEL": "warning"})
    assert [line.split(" [pid")[0] for line in lines(proc)] == ["npu_compat WARNING"]
    proc, _ = run_py(SAY, env={"NPU_COMPAT_LOG_LEVEL": "error"})
    assert lines(proc) == []


def test_a_bad_value_warns_once_and_is_ignored():
    proc, _ = run_py(SAY + "_log.info('again')\n", env={"NPU_COMPAT_LOG_LEVEL": "verbose\u00e9"})
    out = lines(proc)
    assert out[0] == "NPU_COMPAT_LOG_LEVEL='verbose\\xe9' is not understood (use debug, info, warning or error); ignoring it"
    assert out[1:] == ["npu_compat: a warning line"]


def test_a_host_that_configures_logging_still_receives_the_records():
    code = """
import logging
records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append(record.getMessage())
logging.getLogger().addHandler(Keep())
from npu_compat import _log
from support import report
_log.info("npu_compat: decided")
report.emit(records=records)
"""
    proc, r = run_py(code, env={"NPU_COMPAT_LOG_LEVEL": "info"})
    assert r["records"] == ["npu_compat: decided"]
    assert len(lines(proc)) == 1 and lines(proc)[0].endswith("] decided")


def test_the_patch_decision_is_visible_without_configuring_logging(tree):
    # A simulated NPU and the pre-fix tree: the INFO line naming each applied
    # helper reaches stderr only because of the setting.
    code = """
from support import fake_npu, report
fake_npu.install()
import npu_compat
import sglang.srt.managers.overlap_utils
report.emit(states=report.states())
"""
    quiet, r = run_py(code, tree=tree("prefix"))
    loud, r2 = run_py(code, tree=tree("prefix"), env={"NPU_COMPAT_LOG_LEVEL": "info"})
    assert set(r["states"].values()) == set(r2["states"].values()) == {"applied"}
    assert "_gather_spec_extras" not in quiet.stderr
    info = [line for line in lines(loud) if line.startswith("npu_compat INFO [pid ")]
    assert any("_gather_spec_extras" in line for line in info), loud.stderr
    assert any("_assert_nonneg_and_invalidate" in line for line in info), loud.stderr


DECIDE = """
import npu_compat
import sglang.srt.managers.overlap_utils
from support import report
report.emit(states=report.states())
"""


def test_info_shows_per_process_that_it_loaded_the_device_and_every_decision(tree):
    # Off NPU: not-needed and disabled are decisions too, and say so (before, only `applied` logged).
    proc, r = run_py(DECIDE, tree=tree("light"), env={
        "NPU_COMPAT_LOG_LEVEL": "info", "NPU_COMPAT_DEVICE": "cpu", "NPU_COMPAT_DISABLE": "overlap-gather-spec-extras"})
    out = [line.split("] ", 1)[1] for line in lines(proc)]
    assert all(line.startswith("npu_compat INFO [pid ") for line in lines(proc)), proc.stderr
    assert re.fullmatch(r"npu_compat \S+: active in this process \(route import\); \d+ records watch \d+ sglang modules",
                        out[0]), out  # fmt: skip
    assert out[1] == "device: not an NPU: nothing in sglang is changed (forced by NPU_COMPAT_DEVICE=cpu)"
    assert out[2:] == [
        "overlap-assert-nonneg: not-needed: not on NPU: forced by NPU_COMPAT_DEVICE=cpu "
        "(sglang.srt.managers.overlap_utils._assert_nonneg_and_invalidate)",
        "overlap-gather-spec-extras: disabled: NPU_COMPAT_DISABLE names overlap-gather-spec-extras "
        "(sglang.srt.managers.overlap_utils._gather_spec_extras)",
    ]


def test_debug_adds_the_detail(tree):
    proc, _ = run_py(DECIDE, tree=tree("light"), env={"NPU_COMPAT_LOG_LEVEL": "debug", "NPU_COMPAT_DEVICE": "cpu"})
    debug = [line.split("] ", 1)[1] for line in lines(proc) if line.startswith("npu_compat DEBUG")]
    assert any(line.startswith("post-import hooks on sglang.srt.managers.overlap_utils") for line in debug), debug
    info = [line for line in lines(proc) if line.startswith("npu_compat INFO")]
    assert sum(": not-needed: " in line for line in info) == 2, info


def test_debug_on_npu_names_each_replacement_and_the_walk(tree):
    proc, _ = run_py(DECIDE, tree=tree("prefix"), env={"NPU_COMPAT_LOG_LEVEL": "debug", "NPU_COMPAT_DEVICE": "npu"})
    debug = [line.split("] ", 1)[1] for line in lines(proc) if line.startswith("npu_compat DEBUG")]
    assert sum("now runs eagerly on NPU" in line for line in debug) == 2, debug
    assert any("the walk of the loaded sglang modules took" in line for line in debug), debug
    info = [line for line in lines(proc) if line.startswith("npu_compat INFO")]
    assert sum(": applied: " in line for line in info) == 2, info


def test_quiet_by_default_and_info_does_not_import_logging():
    proc, _ = run_py(
        "import sys\nfrom npu_compat import _log\nfrom support import report\n"
        "_log.info('npu_compat: an info line')\nreport.emit(logging='logging' in sys.modules)"
    )
    assert lines(proc) == [] and '"logging": false' in proc.stdout
