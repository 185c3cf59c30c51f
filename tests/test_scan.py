"""Tests of ``npu_compat.scan``: the static torch.compile audit."""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from npu_compat.scan import GUARDED, NPU_BACKEND, UNGUARDED, UNKNOWN, ScanError, main, scan

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "scan_fixtures"
SPELLINGS = FIXTURES / "spellings"
OVERLAP_MODULE = "sglang.srt.managers.overlap_utils"
RUNNER = "import sys; from npu_compat.scan import main; sys.exit(main(sys.argv[1:]))"


class FakeRecord:
    """A registry record as scan reads it (npu_compat.registry's contract)."""

    def __init__(self, name, module, qualname, default=True, kind="guard"):
        self.name, self.module, self.qualname, self.default, self.kind = name, module, qualname, default, kind


def by_file(report):
    out = {}
    for s in report.sites:
        out.setdefault(Path(s.path).name, []).append((s.line, s.target, s.verdict))
    return out


def run_cli(*args, env_extra=None, cwd=REPO):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-c", RUNNER, *map(str, args)],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=120,
    )


@pytest.fixture(scope="module")
def spellings():
    return scan([SPELLINGS], patches=())


# ---- spellings and verdicts, exact lines ----

def test_decorator_spellings_and_qualnames(spellings):
    assert by_file(spellings)["decorators.py"] == [
        (5, "bare", UNGUARDED),
        (10, "empty_call", UNGUARDED),
        (15, "with_kwargs", UNGUARDED),
        (21, "Model.forward", UNGUARDED),
        (26, "Model.Inner.step", UNGUARDED),
        (32, "outer.<locals>.inner", UNGUARDED),
        (39, "via_compiler_namespace", UNGUARDED),
    ]
    apis = {s.line: s.api for s in spellings.sites if s.path.endswith("decorators.py")}
    assert apis[39] == "torch.compiler.compile" and apis[5] == "torch.compile"


def test_call_forms_and_lookalikes_not_flagged(spellings):
    # builtin compile (21), re.compile (22), torch.compiler.disable (23),
    # torch._dynamo.disable (24), Module.compile (25) and a string (26) are not sites
    assert by_file(spellings)["calls.py"] == [
        (11, "_f", UNGUARDED),
        (12, "_f", UNGUARDED),
        (13, "_f", UNGUARDED),
        (17, "fn", UNKNOWN),
    ]
    legacy = [s for s in spellings.sites if s.path.endswith("calls.py") and s.line == 13][0]
    assert legacy.api == "torch._dynamo.optimize" and legacy.backend == "'inductor'"
    kwargs_site = [s for s in spellings.sites if s.path.endswith("calls.py") and s.line == 17][0]
    assert "**kwargs" in kwargs_site.reason


def test_aliases(spellings):
    assert by_file(spellings)["aliases.py"] == [
        (8, "a", UNGUARDED),
        (13, "b", UNGUARDED),
        (18, "c", UNGUARDED),
        (23, "d", UNGUARDED),
        (31, "fn", UNGUARDED),
    ]


def test_guards(spellings):
    assert by_file(spellings)["guards.py"] == [
        (13, "g_disable_npu", GUARDED),  # disable=_is_npu, _is_npu = is_npu()
        (18, "g_disable_or", GUARDED),  # disable=_is_npu or _DEBUG
        (23, "g_backend", NPU_BACKEND),  # backend=get_compiler_backend(): torchair still compiles
        (28, "g_disable_literal", GUARDED),  # disable=True
        (33, "g_torch_npu", GUARDED),  # disable=torch.npu.is_available()
        (40, "g_if_not_npu", GUARDED),  # if not _is_npu:
        (46, "g_disable_npu", GUARDED),  # if _is_cuda: (call form)
        (50, "g_if_is_cuda", GUARDED),  # if is_cuda():
        (59, "g_else_npu", GUARDED),  # else-branch of if _is_npu:
        (67, "self.impl", GUARDED),  # if not _is_npu: inside a method
        (71, "u_disable_false", UNGUARDED),
        (76, "u_debug_flag", UNGUARDED),
        (81, "u_not_npu", UNGUARDED),  # compiles exactly on NPU
        (88, "u_npu_or_cuda", UNGUARDED),
    ]
    reasons = {s.line: s.reason for s in spellings.sites if s.path.endswith("guards.py")}
    assert "line 38" in reasons[40] and "else-branch" in reasons[59]
    assert "does not depend on an NPU check" in reasons[76]
    assert "#16115" in reasons[23] and "#26573" in reasons[23]
    # sglang's is_npu, imported from outside the scan, is known: no naming guess
    assert reasons[13] == "disable=_is_npu is true on NPU"


def test_unknowns_have_reasons(spellings):
    assert by_file(spellings)["unknowns.py"] == [
        (7, "k_unresolved", UNKNOWN),
        (12, "k_imported", UNKNOWN),
        (17, "k_backend", UNKNOWN),
        (23, "fn", UNKNOWN),
    ]
    reasons = {s.line: s.reason for s in spellings.sites if s.path.endswith("unknowns.py")}
    assert "_mystery_flag" in reasons[7]
    assert "imported from .config" in reasons[12]
    assert "_my_backend" in reasons[17]


def test_syntax_error_is_skipped_and_reported(spellings):
    assert (spellings.files_read, spellings.files_parsed, spellings.files_skipped) == (6, 5, 0)
    [err] = spellings.errors
    assert err["path"].endswith("broken.py") and err["error"].startswith("SyntaxError")


def test_bad_files_do_not_stop_the_scan(tmp_path):
    # each could hold a site (torch.compile in code), so each is parsed, and fails
    (tmp_path / "nul.py").write_bytes(b"import torch\x00\ntorch.compile(f)\n")
    (tmp_path / "latin.py").write_bytes(b"import torch\nx = '\xff\xfe'\ntorch.compile(f)\n")
    (tmp_path / "badcookie.py").write_bytes(b"# -*- coding: nosuchcodec -*-\nimport torch\ntorch.compile(f)\n")
    (tmp_path / "plain_broken.py").write_text("def f(:\n")  # cannot hold a site: not parsed
    (tmp_path / "ok.py").write_text("import torch\n\n@torch.compile\ndef f(x):\n    return x\n")
    pyc = tmp_path / "__pycache__"
    pyc.mkdir()
    (pyc / "junk.py").write_text("import torch\ntorch.compile(f)\n")
    report = scan(tmp_path, patches=())
    assert sorted(Path(e["path"]).name for e in report.errors) == ["badcookie.py", "latin.py", "nul.py"]
    assert [(s.line, s.target, s.verdict) for s in report.sites] == [(3, "f", UNGUARDED)]
    assert (report.files_read, report.files_parsed, report.files_skipped) == (5, 1, 1)
    full = scan(tmp_path, patches=(), parse_all=True)
    assert sorted(Path(e["path"]).name for e in full.errors) == ["badcookie.py", "latin.py", "nul.py", "plain_broken.py"]
    assert [s.as_dict() for s in full.sites] == [s.as_dict() for s in report.sites]


# ---- resolution details (inline sources) ----

def _one(tmp_path, source, name="mod.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    report = scan(path, patches=())
    assert not report.errors, report.errors
    return [(s.line, s.verdict) for s in report.sites]


@pytest.mark.parametrize(
    "prelude, kwargs, verdict",
    [
        ("try:\n    import torch_npu\n    _is_npu = True\nexcept ImportError:\n    _is_npu = False\n",
         "disable=_is_npu", GUARDED),
        ("_is_npu = hasattr(torch, 'npu') and torch.npu.is_available()\n", "disable=_is_npu", GUARDED),
        ("from sglang.srt.utils import is_npu\n", "disable=is_npu()", GUARDED),
        ("from sglang.srt.utils import is_npu as _check\n", "disable=_check()", GUARDED),
        ("DEV = 'npu'\n", "disable=DEV == 'npu'", GUARDED),
        ("from x import is_hip\n_is_hip = is_hip()\n", "disable=_is_hip", UNGUARDED),
        ("from x import is_cuda\n", "disable=not is_cuda()", GUARDED),
        ("from x import is_npu, backend_for_npu\n", "backend=backend_for_npu if is_npu() else 'inductor'", NPU_BACKEND),
        ("from x import is_npu\n", "backend='eager' if is_npu() else 'inductor'", UNGUARDED),
        ("from x import get_compiler_backend\n_BACKEND = get_compiler_backend()\n", "backend=_BACKEND", NPU_BACKEND),
        ("from x import is_npu\n", "backend='npu' if is_npu() else 'inductor'", NPU_BACKEND),
        ("from x import make_backend\n", "backend=make_backend()", UNKNOWN),
        ("", "disable=_is_npu", GUARDED),  # unbound, but reads as the NPU check (a guess, said in the reason)
        ("", "disable=_npu_graph_bs", UNKNOWN),  # a word npu is not an NPU check
        ("", "disable=enable_torchair_compile", UNKNOWN),
        ("from x import enable_torchair_compile\n", "disable=enable_torchair_compile", UNKNOWN),
        ("from x import server_args\n", "disable=server_args.enable_torchair_compile", UNGUARDED),
        ("_flag = _other\n", "disable=_flag", UNKNOWN),
        ("a = b\nb = a\n", "disable=a", UNKNOWN),
        ("import os\n", "disable=bool(os.environ.get('X'))", UNGUARDED),
        ("", "disable=input_is_ready", UNKNOWN),  # 'input' is not 'npu'
    ],
)
def test_resolution(tmp_path, prelude, kwargs, verdict):
    source = "import torch\n" + prelude + f"\n@torch.compile({kwargs})\ndef f(x):\n    return x\n"
    line = source.count("\n", 0, source.index("@torch.compile")) + 1
    assert _one(tmp_path, source) == [(line, verdict)]


def test_ifexp_guard_and_factory(tmp_path):
    src = """\
        import torch
        from x import is_npu
        f = torch.compile(g) if not is_npu() else g
        deco = torch.compile(dynamic=True)
        h = torch.compile(g, disable=is_npu()) if is_npu() else torch.compile(g)
    """
    assert _one(tmp_path, src) == [(3, GUARDED), (4, UNGUARDED), (5, GUARDED), (5, GUARDED)]


def test_naming_guess_is_said_in_the_reason(tmp_path):
    (tmp_path / "m.py").write_text(
        "import torch\nfrom x import is_npu\nfrom sglang.srt.utils import is_npu as known\n\n"
        "@torch.compile(disable=_is_npu)\ndef a(x):\n    return x\n\n"
        "@torch.compile(disable=is_npu())\ndef b(x):\n    return x\n\n"
        "@torch.compile(disable=known())\ndef c(x):\n    return x\n"
    )
    reasons = {s.target: s.reason for s in scan(tmp_path, patches=()).sites}
    assert "naming guess" in reasons["a"] and "'_is_npu'" in reasons["a"]
    assert "naming guess" in reasons["b"]
    assert reasons["c"] == "disable=known() is true on NPU"


def test_builtin_compile_flagged_only_when_torch_provides_it(tmp_path):
    assert _one(tmp_path, "x = compile('1', '<s>', 'eval')\nimport re\nre.compile('a')\n") == []
    assert _one(tmp_path, "from torch import compile\ny = compile(f)\n", name="b.py") == [(2, UNGUARDED)]


# ---- coverage by registry records ----

def test_overlap_prefix_is_unguarded_and_covered():
    report = scan([FIXTURES / "overlap_prefix"])
    got = [(s.module, s.line, s.target, s.verdict, s.covered_by) for s in report.sites]
    assert got == [
        (OVERLAP_MODULE, 9, "_assert_nonneg_and_invalidate", UNGUARDED, "overlap-assert-nonneg"),
        (OVERLAP_MODULE, 15, "_gather_spec_extras", UNGUARDED, "overlap-gather-spec-extras"),
        (OVERLAP_MODULE, 27, "_resolve_future_token_ids", NPU_BACKEND, None),
    ]
    assert report.covered(UNGUARDED) == 2
    assert report.exit_code("unguarded") == 0
    assert report.exit_code("npu-backend") == 1  # the torchair site is not covered


def test_overlap_fixed_is_guarded():
    report = scan([FIXTURES / "overlap_fixed"])
    got = [(s.line, s.target, s.verdict, s.reason) for s in report.sites]
    assert got == [
        (11, "_assert_nonneg_and_invalidate", GUARDED, "disable=_is_npu is true on NPU"),
        (17, "_gather_spec_extras", GUARDED, "disable=_is_npu is true on NPU"),
        (29, "_resolve_future_token_ids", NPU_BACKEND, report.sites[2].reason),
    ]
    site = report.sites[2]
    assert (site.line, site.target, site.verdict) == (29, "_resolve_future_token_ids", NPU_BACKEND)
    assert site.reason.startswith("backend=get_compiler_backend() sends NPU to its own compiler")


def test_module_name_from_a_subdirectory_and_a_file():
    sub = FIXTURES / "overlap_prefix" / "sglang" / "srt"
    f = sub / "managers" / "overlap_utils.py"
    for target in (sub, f):
        report = scan(target, patches=(FakeRecord("p", OVERLAP_MODULE, "_gather_spec_extras"),))
        assert {s.module for s in report.sites} == {OVERLAP_MODULE}
        assert [s.covered_by for s in report.sites] == [None, "p", None]


def test_call_form_covered_through_the_bound_name(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "m.py").write_text("import torch\n\ndef _f(x):\n    return x\n\nfast = torch.compile(_f)\n")
    report = scan(tmp_path / "pkg", patches=(FakeRecord("fast-fix", "pkg.m", "fast"),))
    assert [(s.line, s.covered_by) for s in report.sites] == [(6, "fast-fix")]
    assert report.exit_code("unguarded") == 0
    assert scan(tmp_path / "pkg", patches=()).exit_code("unguarded") == 1


def test_opt_in_coverage_is_shown_but_does_not_exempt(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "m.py").write_text(
        "import torch\n\nclass A:\n    @torch.compile\n    def f(self, x):\n        return x\n\n"
        "@torch.compile\ndef g(x):\n    return x\n"
    )
    records = (FakeRecord("a-f", "pkg.m", "A.f", default=False), FakeRecord("g", "pkg.m", "g"),
               FakeRecord("other", "pkg.other", "g"))
    report = scan(tmp_path / "pkg", patches=records)
    assert [(s.target, s.covered_by, s.coverage) for s in report.sites] == [
        ("A.f", "a-f (opt-in)", "opt-in"), ("g", "g", "default"),
    ]
    assert [s.target for s in report.failing("unguarded")] == ["A.f"]


def test_fail_policies(spellings):
    assert spellings.exit_code("never") == 0
    assert spellings.exit_code("unguarded") == 1
    assert spellings.exit_code("unknown") == 1
    fixed = scan(FIXTURES / "overlap_fixed")
    assert fixed.exit_code("unguarded") == 0
    assert fixed.exit_code("npu-backend") == 1 and fixed.exit_code("unknown") == 1
    assert [s.target for s in fixed.failing("npu-backend")] == ["_resolve_future_token_ids"]
    with pytest.raises(ValueError):
        fixed.failing("sometimes")


def test_missing_path_and_package_raise():
    with pytest.raises(ScanError):
        scan(FIXTURES / "no-such-dir")
    with pytest.raises(ScanError):
        scan(packages=["npu_compat_no_such_package_xyz"])


def test_scan_does_not_import_torch_or_scanned_code():
    # torch imported by the package itself (if ever) is not the scanner's doing
    code = (
        "import sys, npu_compat; before = 'torch' in sys.modules\n"
        "from npu_compat.scan import scan\n"
        f"r = scan([{str(FIXTURES)!r}])\n"
        "assert r.sites\n"
        "print(before or 'torch' not in sys.modules, 'sglang' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.split() == ["True", "False"]


# ---- command line, end to end ----

def test_cli_table():
    res = run_cli(FIXTURES / "overlap_prefix")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[:4] == [
        "npu-compat scan: 4 files read (1 parsed, 3 cannot hold a site, 0 failed)",
        "3 torch.compile sites: 0 guarded, 1 npu-backend, 2 unguarded, 0 unknown",
        "covered by npu_compat: 2 of the 2 unguarded and 0 of the 1 npu-backend by",
        "  default",
    ]
    assert lines[4].startswith("scanned in ") and lines[4].endswith(" s")
    assert max(map(len, lines)) <= 80
    assert any(line.endswith(f"overlap_utils.py  [{OVERLAP_MODULE}]") for line in lines)
    row = [line for line in lines if "_gather_spec_extras" in line][0]
    assert row.split()[:4] == ["15", "_gather_spec_extras", "unguarded", "overlap-gather-spec-extras"]


def test_cli_json():
    res = run_cli(SPELLINGS, "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    summary = data["summary"]
    assert (summary["files_read"], summary["files_parsed"], summary["files_skipped"], summary["files_failed"]) == (
        6, 5, 0, 1)
    assert summary["files_scanned"] == 5  # read and analysed
    assert (summary["guarded"], summary["npu-backend"], summary["unguarded"], summary["unknown"]) == (9, 1, 19, 5)
    assert summary["sites"] == len(data["sites"]) == 34
    assert data["errors"][0]["path"].endswith("broken.py")
    site = [s for s in data["sites"] if s["target"] == "g_disable_npu"][0]
    assert site["line"] == 13 and site["disable"] == "_is_npu" and site["verdict"] == "guarded"


def test_cli_fail_on():
    assert run_cli(SPELLINGS, "--fail-on", "unguarded").returncode == 1
    assert run_cli(SPELLINGS).returncode == 0  # default: never
    # every unguarded site is covered by a registered patch
    assert run_cli(FIXTURES / "overlap_prefix", "--fail-on", "unguarded").returncode == 0
    assert run_cli(FIXTURES / "overlap_fixed", "--fail-on", "unguarded").returncode == 0
    assert run_cli(FIXTURES / "overlap_fixed", "--fail-on", "npu-backend").returncode == 1
    assert run_cli(SPELLINGS / "unknowns.py", "--fail-on", "unguarded").returncode == 0
    assert run_cli(SPELLINGS / "unknowns.py", "--fail-on", "unknown").returncode == 1


def test_cli_missing_path():
    res = run_cli(FIXTURES / "no-such-dir")
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert res.stderr.count("\n") == 1
    assert res.stderr.startswith("npu-compat scan: error: no such file or directory")


def test_cli_package_not_installed():
    res = run_cli("--package", "npu_compat_no_such_package_xyz")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.startswith("npu-compat scan: error: package 'npu_compat_no_such_package_xyz' is not installed")
    assert res.stderr.count("\n") == 1


def test_cli_default_package_is_sglang_and_never_imported(tmp_path):
    pkg = tmp_path / "sglang"
    (pkg / "srt" / "managers").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('imported!')\n")
    (pkg / "srt" / "__init__.py").write_text("")
    src = (FIXTURES / "overlap_prefix" / "sglang" / "srt" / "managers" / "overlap_utils.py").read_text()
    (pkg / "srt" / "managers" / "overlap_utils.py").write_text(src)
    env = {"PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path)])}
    res = run_cli("--json", env_extra=env)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert [(s["path"], s["module"], s["line"], s["covered_by"]) for s in data["sites"]][:2] == [
        ("sglang/srt/managers/overlap_utils.py", OVERLAP_MODULE, 9, "overlap-assert-nonneg"),
        ("sglang/srt/managers/overlap_utils.py", OVERLAP_MODULE, 15, "overlap-gather-spec-extras"),
    ]
    sub = run_cli("--package", "sglang.srt.managers", "--fail-on", "unguarded", env_extra=env)
    assert sub.returncode == 0 and "3 torch.compile sites" in sub.stdout


def test_cli_usage_errors():
    assert run_cli("--fail-on", "sometimes").returncode == 2
    assert run_cli("--package", "bad..name").returncode == 2
    helped = run_cli("--help")
    assert helped.returncode == 0 and "npu-backend" in helped.stdout and "--diff" in helped.stdout
    both = run_cli("--diff", FIXTURES / "overlap_fixed", FIXTURES / "overlap_prefix", SPELLINGS)
    assert both.returncode == 2 and both.stderr.count("\n") == 1 and "Traceback" not in both.stderr


def test_main_in_process_returns_code(capsys):
    assert main([str(FIXTURES / "overlap_fixed"), "--fail-on", "unguarded"]) == 0
    assert capsys.readouterr().out.startswith("npu-compat scan: 4 files read")


# ---- speed ----

def test_speed_on_two_thousand_files(tmp_path):
    body = textwrap.dedent(
        """\
        import torch
        from sglang.srt.utils import is_npu

        _is_npu = is_npu()


        class Helper{i}:
            def method(self, x):
                if x is None:
                    return [v * 2 for v in range(10)]
                return {{"k": x, "n": {i}}}


        @torch.compile(dynamic=True, disable=_is_npu)
        def guarded_{i}(x):
            return x + 1


        @torch.compile
        def plain_{i}(x):
            return x - 1
        """
    )
    for d in range(20):
        sub = tmp_path / f"pkg{d}"
        sub.mkdir()
        for i in range(100):
            (sub / f"m{i}.py").write_text(body.format(i=i) if i % 2 else "x = 1\n" * 30)
    start = time.perf_counter()
    report = scan(tmp_path, patches=())
    elapsed = time.perf_counter() - start
    print(f"\nscanned {report.files_scanned} files, {len(report.sites)} sites in {elapsed:.2f} s")
    assert (report.files_read, report.files_parsed, report.files_skipped) == (2000, 1000, 1000)
    assert report.counts() == {GUARDED: 1000, NPU_BACKEND: 0, UNGUARDED: 1000, UNKNOWN: 0}
    assert elapsed < 10



# ---- the reference page cannot drift from the command ----

def test_docs_name_every_verdict_policy_and_option():
    from npu_compat.scan import FAIL_POLICIES, VERDICTS
    from npu_compat.scan.cli import _parser

    page = (REPO / "docs" / "scan.md").read_text()
    for word in VERDICTS + FAIL_POLICIES:
        assert f"`{word}`" in page, f"docs/scan.md does not explain {word!r}"
    options = [o for a in _parser()._actions for o in a.option_strings if o.startswith("--") and o != "--help"]
    assert options and all(f"`{o}" in page for o in options), options


def test_cli_parse_all_reports_every_syntax_error(tmp_path):
    (tmp_path / "ok.py").write_text("import torch\n\nf = torch.compile(g)\n")
    (tmp_path / "broken.py").write_text("def f(:\n")
    fast, full = run_cli(tmp_path, "--json", "--fail-on", "unknown"), run_cli(tmp_path, "--json", "--parse-all")
    a, b = json.loads(fast.stdout), json.loads(full.stdout)
    assert fast.returncode == 1  # the unguarded site
    assert a["sites"] == b["sites"] and a["errors"] == []
    assert [Path(e["path"]).name for e in b["errors"]] == ["broken.py"]
    assert (b["summary"]["files_parsed"], b["summary"]["files_failed"]) == (1, 1)
