"""``npu-compat scan``: what an expression is on NPU, across modules, and the
verdicts the first scanner got wrong (each with a fixture)."""

import ast
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from npu_compat.scan import GUARDED, NPU_BACKEND, UNGUARDED, UNKNOWN, scan

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "scan_fixtures"
FALSE = FIXTURES / "false_verdicts"
CROSS = FIXTURES / "crossmod"


def sites_of(report, name):
    return [(s.line, s.target, s.verdict) for s in report.sites if Path(s.path).name == name]


@pytest.fixture(scope="module")
def false_verdicts():
    return scan([FALSE], patches=())


@pytest.fixture(scope="module")
def crossmod():
    return scan([CROSS / "pkg"], patches=())


# ---- npu-backend: NPU compiles with torchair ----

def test_npu_backend_verdict(false_verdicts):
    assert sites_of(false_verdicts, "torchair.py") == [
        (9, "t_backend", NPU_BACKEND),
        (14, "t_backend_disabled", GUARDED),  # disable=_is_npu wins: NPU never compiles it
        (19, "t_npugraph", NPU_BACKEND),  # a torch_npu backend name
        (26, "fn", NPU_BACKEND),  # backend = get_compiler_backend(...) in the function
    ]
    reason = [s.reason for s in false_verdicts.sites if s.target == "t_backend"][0]
    assert "torchair" in reason and all(pr in reason for pr in ("#16115", "#18553", "#26573"))
    assert false_verdicts.summary()[NPU_BACKEND] == 3


# ---- the false verdicts of the first scanner ----

def test_global_rebinding_is_a_runtime_flag(false_verdicts):
    # is_capture_mode = False at module level, set True through `global`: not a constant
    assert sites_of(false_verdicts, "capture_mode.py") == [(23, "model", UNGUARDED)]


def test_npu_in_a_name_is_not_an_npu_check(false_verdicts):
    assert sites_of(false_verdicts, "npu_words.py") == [
        (7, "model", UNGUARDED),  # if not server_args.enable_torchair_compile:
        (13, "fn", UNGUARDED),  # if not npu_graph_bs:
        (18, "lambda x: x", UNGUARDED),  # if not npu_graph_bs_default: (unresolved, not a device name)
    ]


def test_dominating_early_return_is_a_guard(false_verdicts):
    assert sites_of(false_verdicts, "early_return.py") == [
        (12, "fn", GUARDED),  # if _is_npu: return fn
        (20, "fn", GUARDED),  # else: raise on NPU
        (26, "fn", UNGUARDED),  # if not _is_npu: return fn -> compiles exactly on NPU
    ]
    reasons = [s.reason for s in false_verdicts.sites if Path(s.path).name == "early_return.py"]
    assert reasons[0] == "after `if _is_npu:` (line 10), whose body leaves the function or loop; true on NPU"
    assert reasons[1].startswith("after `if not _is_npu:` (line 16), whose else-branch leaves")


def test_compile_bound_to_a_name_is_found(false_verdicts):
    assert sites_of(false_verdicts, "aliases.py") == [
        (15, "a_plain", UNGUARDED),  # _compile = torch.compile; @_compile
        (20, "a_conditional", GUARDED),  # compile_fn = torch.compile if not _is_npu else ...
        (25, "a_plain", GUARDED),  # compile_fn(a_plain)
        (28, "a_on_npu", UNGUARDED),  # torch.compile only on NPU
        (33, "a_partial", GUARDED),  # partial(torch.compile, disable=_is_npu)
        (38, "(used as a value: torch.compile)", UNKNOWN),
    ]
    reasons = {s.line: s.reason for s in false_verdicts.sites if Path(s.path).name == "aliases.py"}
    assert "through _compile = torch.compile" in reasons[15]
    assert reasons[20].startswith("compile_fn is torch.compile only when `not _is_npu` is true (line 10)")


def test_a_fifo_named_py_does_not_hang(tmp_path):
    (tmp_path / "ok.py").write_text("import torch\ntorch.compile(f)\n")
    os.mkfifo(tmp_path / "pipe.py")
    done = {}
    worker = threading.Thread(target=lambda: done.setdefault("r", scan([tmp_path], patches=())), daemon=True)
    worker.start()
    worker.join(30)
    assert "r" in done, "scan blocked on a FIFO"
    report = done["r"]
    assert [Path(e["path"]).name for e in report.errors] == ["pipe.py"]
    assert "not a regular file (a FIFO)" in report.errors[0]["error"]
    assert len(report.sites) == 1
    # named on the command line too
    res = subprocess.run([sys.executable, "-m", "npu_compat", "scan", str(tmp_path / "pipe.py")],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert res.returncode == 0 and "not a regular file" in res.stdout


# ---- names across modules of the scan ----

def test_names_across_modules(crossmod):
    got = {(Path(s.path).name, s.target): (s.verdict, s.reason) for s in crossmod.sites}
    assert {k: v[0] for k, v in got.items()} == {
        ("absolute.py", "m_absolute"): GUARDED,  # from pkg.utils import is_npu (star re-export, body followed)
        ("relative.py", "m_relative"): GUARDED,  # from ..flags import _is_npu
        ("relative.py", "lambda x: x"): GUARDED,  # if _is_cuda: (is_cuda's body: torch.cuda.is_available())
        ("reexport.py", "m_reexported"): GUARDED,  # flag computed in flags.py, re-exported by pkg/__init__
        ("reexport.py", "m_kind"): UNGUARDED,  # a function returning a constant string: false on NPU
        ("through_alias.py", "m_alias"): UNGUARDED,  # jit = torch.compile in pkg/jit.py, imported as fast
    }
    assert all("naming guess" not in reason for _, reason in got.values())
    assert crossmod.files_skipped == 1  # models/__init__.py: no site, no lookup needs it


def test_same_names_unresolved_without_the_defining_module():
    report = scan([CROSS / "pkg" / "models" / "relative.py"], patches=())
    # pkg.flags is outside this scan: the names are judged by their spelling, and say so
    [site, _] = report.sites
    assert site.verdict == GUARDED and "naming guess" in site.reason
    alone = scan([CROSS / "pkg" / "models" / "reexport.py"], patches=())
    assert alone.sites[0].verdict == UNKNOWN and "not in the scan" in alone.sites[0].reason


def test_fast_scan_equals_a_parse_of_every_file():
    for tree in (FALSE, CROSS, FIXTURES / "spellings"):
        fast, full = scan([tree], patches=()), scan([tree], patches=(), parse_all=True)
        assert [s.as_dict() for s in fast.sites] == [s.as_dict() for s in full.sites]
        assert full.files_skipped == 0 and full.files_parsed + len(full.errors) == full.files_read


def test_files_that_cannot_hold_a_site_are_not_parsed(tmp_path):
    (tmp_path / "regex.py").write_text("import re\nre.compile('x')  # torch.compile here is a comment\n")
    (tmp_path / "doc.py").write_text('"""Call torch.compile(fn) to compile."""\nx = "torch.compile"\n')
    (tmp_path / "real.py").write_text("import torch as t\n\nf = t.compile(g)\n")
    (tmp_path / "imported.py").write_text("from torch import compile as c\n\nh = c(g)\n")
    report = scan(tmp_path, patches=())
    assert (report.files_read, report.files_parsed, report.files_skipped) == (4, 2, 2)
    assert sorted(Path(s.path).name for s in report.sites) == ["imported.py", "real.py"]


# ---- layout ----

def test_layout_no_cycle_no_long_class():
    pkg = REPO / "npu_compat" / "scan"
    names = {p.stem for p in pkg.glob("*.py")}
    assert {"files", "bindings", "evaluate", "sites", "judge", "report", "render", "diff", "cli"} <= names
    for path in pkg.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                assert node.end_lineno - node.lineno <= 200, f"{path.name}: class {node.name} is too long"
    cli = (REPO / "npu_compat" / "cli.py").read_text()
    assert "class OneLineParser" not in cli and "from npu_compat._cli_util import" in cli
    code = (
        "import sys, npu_compat; assert 'npu_compat.scan' not in sys.modules, 'import npu_compat loads the scanner'\n"
        "import npu_compat.scan.cli; assert 'npu_compat.cli' not in sys.modules, 'scan imports the CLI'\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


def test_too_deep_to_analyse_is_an_error_not_a_crash(tmp_path):
    nested = "".join("    " * i + f"if c{i}:\n" for i in range(90)) + "    " * 90 + "torch.compile(f)\n"
    (tmp_path / "deep.py").write_text("import torch\n" + nested)
    (tmp_path / "ok.py").write_text("import torch\n\nf = torch.compile(g)\n")
    normal = scan([tmp_path], patches=())
    assert sorted(Path(s.path).name for s in normal.sites) == ["deep.py", "ok.py"] and not normal.errors
    # with a small stack the walk of deep.py runs out of it: that file is reported, the scan goes on
    code = (
        "import sys; from npu_compat.scan import scan; sys.setrecursionlimit(120)\n"
        f"r = scan([{str(tmp_path)!r}], patches=())\n"
        "print([s.path.rsplit('/', 1)[1] for s in r.sites], [e['error'] for e in r.errors],"
        " r.files_read == r.files_parsed + r.files_skipped + len(r.errors))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.stdout.strip() == "['ok.py'] ['RecursionError: nesting too deep to analyse'] True", out.stderr[-2000:]
