"""The docs cannot drift from the code: patch table, set-up commands, settings, links, matrix legs."""

import ast
import glob
import os
import re
import subprocess

import npu_compat
from npu_compat import registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT = "https://github.com/npu-compat/npu-compat/blob/main/"
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def text_of(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def readme():
    return text_of("README.md")


def doc_pages():
    return ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))


def test_the_patch_table_is_the_registrys():
    # The table lives in one page (README or docs/), between its markers.
    start, end = "<!-- patch-table:start -->\n", "\n<!-- patch-table:end -->"
    holders = [p for p in doc_pages() if start in text_of(p)]
    assert len(holders) == 1, f"patch-table markers in {holders or 'no page'}: exactly one page holds the table"
    table = text_of(holders[0]).split(start, 1)[1].split(end, 1)[0]
    assert table == registry.patch_table(), f"regenerate the table in {holders[0]} from npu_compat.registry.patch_table()"


def command(tag):
    m = re.search(rf"<!-- command:{tag} -->\n```sh\n(.*?)\n```", readme(), re.S)
    assert m, f"README lacks the {tag} command block"
    return m.group(1)


def ci_command(tag):
    """What .ci/run's own extraction takes from the README for `tag`."""
    ci = text_of(".ci/run")
    func = re.search(r"^readme_command\(\) \{.*?^\}$", ci, re.S | re.M).group(0)
    proc = subprocess.run(
        ["bash", "-c", f"{func}\nreadme_command {tag}"], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.rstrip("\n")


def test_ci_runs_the_readmes_five_commands_verbatim():
    ci = text_of(".ci/run")
    assert re.search(r"^for step in main tests matrix releases long; do$", ci, re.M)
    assert 'bash -euo pipefail -c "$(readme_command $step)"' in ci
    for tag in ("main", "tests", "matrix", "releases", "long"):
        assert ci_command(tag) == command(tag)
    assert "torch==2.13.0" in command("main")  # never a plain `pip install torch` here
    assert "pytest -n 2" in command("tests") and "NPU_COMPAT_SGLANG_PYTHON" in command("tests")
    assert "scripts/make_sglang_venv.sh" in command("tests")
    assert re.search(r"\bnox -s( [\w.-]+)+$", command("matrix"))
    assert command("releases").startswith(".venv/bin/python scripts/check_releases.py ")
    assert "NPU_COMPAT_TEST_RELEASES=all" in command("long") and "-k 0.5.13" in command("long")


def nox_legs():
    """Leg names the noxfile defines, read without importing nox."""
    tree = ast.parse(text_of("noxfile.py"))
    consts = {
        t.id: ast.literal_eval(n.value)
        for n in tree.body
        if isinstance(n, ast.Assign)
        for t in n.targets
        if isinstance(t, ast.Name) and t.id in ("PYTHONS", "TORCH_LEGS")
    }
    legs = {f"notorch-{v}" for v in consts["PYTHONS"]} | {leg[0] for leg in consts["TORCH_LEGS"]}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            for deco in node.decorator_list:
                if isinstance(deco, ast.Call) and getattr(deco.func, "attr", "") == "session":
                    kw = {k.arg: k.value for k in deco.keywords}
                    if "name" in kw and isinstance(kw["name"], ast.Constant):
                        legs.add(kw["name"].value)
                    elif "python" not in kw or isinstance(kw["python"], ast.Constant):
                        legs.add(node.name)
    return legs


def test_the_matrix_docs_name_exactly_the_noxfiles_legs():
    legs = nox_legs()
    assert {"notorch-3.10", "notorch-3.13", "torch-2.1", "wrapt-1.15", "package"} <= legs
    assert set(command("matrix").split("nox -s ", 1)[1].split()) <= legs
    support = text_of("docs/support.md")
    table = {m for m in re.findall(r"^\| `([\w.-]+)` \|", support, re.M)}
    assert table == legs, "docs/support.md's leg table and noxfile.py disagree"
    for leg in legs:  # each leg says whether CI runs it
        row = re.search(rf"^\| `{re.escape(leg)}` \|.*$", support, re.M).group(0)
        assert ("| yes |" in row) == (leg in command("matrix").split()), row


def test_every_setting_the_package_reads_is_in_the_readmes_table():
    read = set()
    for path in glob.glob(os.path.join(ROOT, "npu_compat", "**", "*.py"), recursive=True):
        with open(path, encoding="utf-8") as f:
            read |= set(re.findall(r"\bNPU_COMPAT_[A-Z][A-Z_]*[A-Z]\b", f.read()))
    settings = readme().split("## Settings", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `(NPU_COMPAT_[A-Z_]+)` \|", settings, re.M))
    assert "NPU_COMPAT_LOG_LEVEL" in read
    missing = sorted(read - listed)
    assert missing == [], f"settings the README's table lacks: {missing}"


def test_readme_links_work_on_the_package_index():
    # PyPI renders the README away from the repository: no relative links.
    links = LINK.findall(readme())
    assert links
    for link in links:
        assert link.startswith("https://"), f"README link {link!r} breaks on PyPI: make it absolute"
        if link.startswith(PROJECT):
            path = link[len(PROJECT) :].split("#", 1)[0]
            assert os.path.exists(os.path.join(ROOT, path)), f"README links {path}, which does not exist"


def test_doc_pages_link_only_what_exists():
    for page in doc_pages()[1:]:
        for link in LINK.findall(text_of(page)):
            if link.startswith(("https://", "http://", "#", "mailto:")):
                continue
            target = os.path.normpath(os.path.join(ROOT, os.path.dirname(page), link.split("#", 1)[0]))
            assert os.path.exists(target), f"{page} links {link}, which does not exist"


def test_watched_packages_match_the_registry_targets():
    tops = {m.partition(".")[0] for m in registry.target_modules()}
    assert set(npu_compat.WATCHED_PACKAGES) == tops


def test_every_record_is_sound_and_names_are_unique():
    patches, errors = registry.load()
    assert errors == ()
    assert len({p.name for p in patches}) == len(patches) >= 2
    for p in patches:
        assert p.problem() == ""
        if getattr(p, "kind", "patch") == "patch":
            mod, _, attr = p.impl.partition(":")
            assert mod.startswith("npu_compat.impl.")
