"""The sdist and wheel as a user gets them: license, py.typed, one version, metadata, an sdist whose tests run.

Built here with ``python -m build --no-isolation`` (offline, with this
environment's setuptools: the ``package`` nox leg installs the floor, 77).
"""

import email
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

import npu_compat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VERSION = npu_compat.__version__
PYTHONS = ("3.10", "3.11", "3.12", "3.13")


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    # Build from a copy: two xdist workers building in the checkout race on its egg-info.
    src = tmp_path_factory.mktemp("src") / "npu-compat"
    shutil.copytree(
        ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv*", ".nox", "build", "*.egg-info", "__pycache__", "dist")
    )
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    sdists, wheels = sorted(out.glob("*.tar.gz")), sorted(out.glob("*.whl"))
    assert [p.name for p in sdists] == [f"npu_compat-{VERSION}.tar.gz"]
    assert [p.name for p in wheels] == [f"npu_compat-{VERSION}-py3-none-any.whl"]
    return sdists[0], wheels[0]


def read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def wheel_metadata(wheel):
    with zipfile.ZipFile(wheel) as z:
        return email.message_from_bytes(z.read(f"npu_compat-{VERSION}.dist-info/METADATA")), set(z.namelist()), z


def test_the_version_is_written_once():
    pyproject = read("pyproject.toml")
    project = pyproject.split("[project]", 1)[1].split("\n[", 1)[0]
    assert not re.search(r"^version\s*=", project, re.M)
    assert 'dynamic = ["version"]' in project and 'attr = "npu_compat.__version__"' in pyproject
    assert re.fullmatch(r"\d+\.\d+\.\d+", VERSION)


def test_the_wheel_carries_license_py_typed_and_honest_metadata(dists):
    meta, names, _ = wheel_metadata(dists[1])
    with zipfile.ZipFile(dists[1]) as z:
        assert z.read(f"npu_compat-{VERSION}.dist-info/licenses/LICENSE").decode() == read("LICENSE")
        assert z.read("npu_compat/py.typed") == b""
        entry_points = z.read(f"npu_compat-{VERSION}.dist-info/entry_points.txt").decode()
    assert "npu_compat/bootstrap/sitecustomize.py" in names
    assert not any(n.startswith("tests/") for n in names)
    assert meta["Version"] == VERSION
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta["Requires-Python"] == ">=3.10"
    requires = meta.get_all("Requires-Dist")
    runtime = [r for r in requires if "extra ==" not in r]
    # torch and torch_npu are the image's, pinned to each other: never pulled or replaced by pip
    assert runtime == ["wrapt>=1.15"]  # the tested floor (docs/support.md)
    assert not any(re.match(r"torch", r) for r in requires)
    assert meta.get_all("Provides-Extra") == ["test"]  # no `npu` extra
    classifiers = meta.get_all("Classifier")
    assert {f"Programming Language :: Python :: {v}" for v in PYTHONS} <= set(classifiers)
    assert "Typing :: Typed" in classifiers
    assert not any(c.startswith("License ::") for c in classifiers)  # the expression says it
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert {"Homepage", "Source", "Issues", "Changelog"} <= set(urls)
    assert all(u.startswith("https://") for u in urls.values())
    assert "[sglang.srt.plugins]\nnpu_compat = npu_compat.plugin:load" in entry_points
    assert "npu-compat = npu_compat.cli:entry" in entry_points


def test_the_sdist_carries_every_file_its_tests_need(dists):
    prefix = f"npu_compat-{VERSION}/"
    with tarfile.open(dists[0]) as t:
        names = {n[len(prefix) :] for n in t.getnames()}
    wanted = {"LICENSE", "CHANGELOG.md", "README.md", "pyproject.toml", "noxfile.py", ".ci/run", "npu_compat/py.typed"}
    for top in ("tests", "scripts", "docs"):
        for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, top)):
            dirnames[:] = [d for d in dirnames if d != "__pycache__" and not d.startswith(".")]
            wanted.update(
                os.path.relpath(os.path.join(dirpath, f), ROOT) for f in filenames if not f.endswith((".pyc", ".pyo"))
            )
    assert {"tests/conftest.py", "tests/support/__init__.py", "tests/fixtures/__init__.py"} <= wanted
    assert sorted(wanted - names) == []
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_the_sdist_runs_its_own_tests(dists, tmp_path):
    with tarfile.open(dists[0]) as t:
        t.extractall(tmp_path, filter="data") if hasattr(tarfile, "data_filter") else t.extractall(tmp_path)
    tree = tmp_path / f"npu_compat-{VERSION}"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
         "tests/test_scan.py", "tests/test_sitedir.py", "tests/test_log.py",
         "tests/test_docs.py::test_ci_runs_the_readmes_five_commands_verbatim", "-k", "not patch_decision and not on_npu",
         "-c", "pyproject.toml", "--rootdir", "."],
        cwd=tree, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert re.search(r"\d+ passed", proc.stdout)
    # The sdist's own package was the one tested, not this checkout's.
    probe = subprocess.run(
        [sys.executable, "-c", "import npu_compat; print(npu_compat.__file__)"],
        cwd=tree, env=env, capture_output=True, text=True, timeout=60,
    )
    assert probe.stdout.strip().startswith(str(tree))


def test_twine_check_passes_strict(dists):
    proc = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, dists)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("PASSED") == 2


def test_the_changelog_has_this_version_and_the_next():
    text = read("CHANGELOG.md")
    headings = re.findall(r"^## \[(\d+\.\d+\.\d+)\]", text, re.M)
    assert VERSION in headings and "0.1.0" in headings and "0.2.0" in headings
    assert headings == sorted(headings, key=lambda v: tuple(map(int, v.split("."))), reverse=True)
    for version in headings:  # every heading links somewhere
        assert re.search(rf"^\[{re.escape(version)}\]: https://", text, re.M)
