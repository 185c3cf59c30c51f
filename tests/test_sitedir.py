"""npu-compat install / uninstall: chain, restore byte for byte, refuse cleanly, survive a crash."""

import errno
import os
import signal
import stat
import subprocess
import sys

import pytest
from conftest import TESTS, clean_env, record_cases

import npu_compat
from npu_compat import sitedir

PREVIOUS = b"# the image's own start-up code\nimport sys\nIMAGE_MARK = 'kept'\nprint('image sitecustomize ran', flush=True)\n"


def snapshot(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            data = open(path, "rb").read() if stat.S_ISREG(st.st_mode) else os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
            out[os.path.relpath(path, root)] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), data)
    return out


def cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "npu_compat", *args], env=clean_env(), capture_output=True, text=True, timeout=60
    )


def python_in(site, code):
    env = clean_env(PYTHONPATH=os.pathsep.join([str(site), TESTS]), PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def site(tmp_path):
    d = tmp_path / "site-packages"
    d.mkdir()
    (d / "other.py").write_text("x = 1\n")
    return d


@pytest.mark.parametrize("previous", [None, PREVIOUS], ids=["empty", "with-previous"])
def test_round_trip_is_byte_identical_and_the_installed_file_works(site, previous):
    if previous is not None:
        (site / "sitecustomize.py").write_bytes(previous)
        os.chmod(site / "sitecustomize.py", 0o640)
    before = snapshot(site)
    r = cli("install", "--site-dir", str(site))
    assert r.returncode == 0, r.stderr
    assert "installed" in r.stdout
    run = python_in(site, "import npu_compat, sitecustomize; print(npu_compat.route(), getattr(sitecustomize, 'IMAGE_MARK', None))")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    if previous is None:
        assert lines == ["sitecustomize None"]
    else:
        assert lines == ["image sitecustomize ran", "sitecustomize kept"]  # ran once, after activation
    r = cli("uninstall", "--site-dir", str(site))
    assert r.returncode == 0, r.stderr
    assert snapshot(site) == before
    record_cases("site dir: install/uninstall round trip, byte-identical", 1)


def test_dry_run_changes_nothing(site):
    (site / "sitecustomize.py").write_bytes(PREVIOUS)
    (site / ".npu-compat-stale.tmp").write_bytes(b"left by another run")  # not even this goes
    before = snapshot(site)
    r = cli("install", "--site-dir", str(site), "--dry-run")
    assert r.returncode == 0 and sitedir.MARKER in r.stdout
    assert snapshot(site) == before
    cli("install", "--site-dir", str(site))
    installed = snapshot(site)
    r = cli("uninstall", "--site-dir", str(site), "--dry-run")
    assert r.returncode == 0 and "would restore" in r.stdout
    assert snapshot(site) == installed


def _refusal_cases(site, tmp_path):
    def already(d):
        sitedir.install(str(d))
        return "install"

    def symlink(d):
        (tmp_path / "real.py").write_bytes(PREVIOUS)
        os.symlink(tmp_path / "real.py", d / "sitecustomize.py")
        return "install"

    def directory(d):
        (d / "sitecustomize.py").mkdir()
        return "install"

    def package(d):
        (d / "sitecustomize").mkdir()
        (d / "sitecustomize" / "__init__.py").write_text("")
        return "install"

    def not_python(d):
        (d / "sitecustomize.py").write_bytes(b"def broken(:\n")
        return "install"

    def not_utf8(d):
        (d / "sitecustomize.py").write_bytes(b"x = '\xff\xfe'\n")
        return "install"

    def foreign(d):
        (d / "sitecustomize.py").write_bytes(PREVIOUS)
        return "uninstall"

    def edited(d):
        sitedir.install(str(d))
        with open(d / "sitecustomize.py", "a") as f:
            f.write("# someone's edit\n")
        return "uninstall"

    def nothing(d):
        return "uninstall"

    def missing_dir(d):
        return ("install", str(d / "nope"))

    return [already, symlink, directory, package, not_python, not_utf8, foreign, edited, nothing, missing_dir]


@pytest.mark.parametrize("case", range(10))
def test_refusals_leave_the_directory_exactly_as_it_was(site, tmp_path, case):
    fn = _refusal_cases(site, tmp_path)[case]
    action = fn(site)
    target = str(site)
    if isinstance(action, tuple):
        action, target = action
    before = snapshot(site)
    r = cli(action, "--site-dir", target)
    assert r.returncode == 1, (fn.__name__, r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and "refused" in r.stderr and "Traceback" not in r.stderr
    assert snapshot(site) == before, fn.__name__
    record_cases("site dir: refusals leave it unchanged", 1)


@pytest.mark.parametrize("fault", ["read-only", "disk-full", "fsync", "replace"])
@pytest.mark.parametrize("previous", [None, PREVIOUS], ids=["empty", "with-previous"])
def test_write_faults_leave_the_directory_exactly_as_it_was(site, monkeypatch, fault, previous):
    if previous is not None:
        (site / "sitecustomize.py").write_bytes(previous)
    before = snapshot(site)

    def fail(err):
        def raiser(*a, **k):
            raise OSError(err, os.strerror(err))

        return raiser

    if fault == "read-only":  # root ignores mode bits: fail where the OS would
        import tempfile

        monkeypatch.setattr(tempfile, "mkstemp", fail(errno.EACCES))
    elif fault == "disk-full":
        monkeypatch.setattr(sitedir.os, "write", fail(errno.ENOSPC))
    elif fault == "fsync":
        monkeypatch.setattr(sitedir.os, "fsync", fail(errno.EIO))
    else:
        monkeypatch.setattr(sitedir.os, "replace", fail(errno.EXDEV))
    with pytest.raises(sitedir.Refused) as info:
        sitedir.install(str(site))
    monkeypatch.undo()
    assert "nothing changed" in str(info.value)
    assert snapshot(site) == before
    record_cases("site dir: write faults leave it unchanged", 1)


KILLER = """
import os, signal, sys
from npu_compat import sitedir
real_replace = os.replace
def replace(a, b):
    if sys.argv[2] == "after":
        real_replace(a, b)
    os.kill(os.getpid(), signal.SIGKILL)
sitedir.os.replace = replace
sitedir.{action}(sys.argv[1])
"""


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("action", ["install", "uninstall"])
def test_a_crash_mid_change_leaves_old_or_new_never_a_mix(site, when, action):
    (site / "sitecustomize.py").write_bytes(PREVIOUS)
    mode = stat.S_IMODE(os.stat(site / "sitecustomize.py").st_mode)
    if action == "uninstall":
        sitedir.install(str(site))
    old = (site / "sitecustomize.py").read_bytes()
    proc = subprocess.run(
        [sys.executable, "-c", KILLER.format(action=action), str(site), when], env=clean_env(), timeout=60
    )
    assert proc.returncode == -signal.SIGKILL
    now = (site / "sitecustomize.py").read_bytes()
    new = PREVIOUS if action == "uninstall" else sitedir.render(PREVIOUS, mode).encode()
    assert now == (old if when == "before" else new)
    # What a crash may leave is a temporary file that Python never imports; the next run clears it.
    leftovers = [n for n in os.listdir(site) if n.startswith(".npu-compat-")]
    assert all(n.endswith(".tmp") for n in leftovers)
    try:
        sitedir.plan_install(str(site), clean=True)  # checks the directory first, which clears stale files
    except sitedir.Refused:
        pass
    assert [n for n in os.listdir(site) if n.startswith(".npu-compat-")] == []
    record_cases("site dir: killed mid-change, old or new never a mix", 1)


def test_default_site_dir_is_this_interpreters_purelib():
    import sysconfig

    assert sitedir.default_dir() == sysconfig.get_paths()["purelib"]


def test_bootstrap_dir_holds_only_the_packages_own_file():
    names = sorted(n for n in os.listdir(npu_compat.BOOTSTRAP_DIR) if n != "__pycache__")
    assert names == ["sitecustomize.py"]


PAUSED_INSTALL = """
import os, sys, time
from npu_compat import sitedir
site, ready, go = sys.argv[1:4]
real_fsync = os.fsync
def fsync(fd):
    open(ready, "w").close()  # the temporary file is written: let the other install run now
    deadline = time.monotonic() + 60
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.02)
    real_fsync(fd)
sitedir.os.fsync = fsync
try:
    sitedir.install(site)
except sitedir.Refused as exc:
    print("refused:", exc)
    sys.exit(1)
"""


def test_a_concurrent_install_never_deletes_the_others_temporary_file(site, tmp_path):
    # The second install used to take the first one's temporary file for a
    # stale one and delete it mid-write: the first then failed.
    (site / "sitecustomize.py").write_bytes(PREVIOUS)
    mode = stat.S_IMODE(os.stat(site / "sitecustomize.py").st_mode)
    ready, go = tmp_path / "ready", tmp_path / "go"
    first = subprocess.Popen(
        [sys.executable, "-c", PAUSED_INSTALL, str(site), str(ready), str(go)],
        env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        for _ in range(3000):
            if ready.exists() or first.poll() is not None:
                break
            import time

            time.sleep(0.02)
        assert ready.exists(), first.communicate()
        temporaries = [n for n in os.listdir(site) if n.startswith(".npu-compat-")]
        assert len(temporaries) == 1
        second = cli("install", "--site-dir", str(site))  # meanwhile
        assert second.returncode == 0, second.stderr
        assert (site / temporaries[0]).exists()  # the first one's file is still there
    finally:
        go.touch()
        out, err = first.communicate(timeout=60)
    assert first.returncode == 0, out + err
    assert (site / "sitecustomize.py").read_bytes() == sitedir.render(PREVIOUS, mode).encode()
    assert [n for n in os.listdir(site) if n.startswith(".npu-compat-")] == []
    cli("uninstall", "--site-dir", str(site))
    assert (site / "sitecustomize.py").read_bytes() == PREVIOUS
    record_cases("site dir: concurrent installs, neither loses its temporary file", 1)


def _compile_unchecked(path):
    import importlib.util
    import py_compile

    py_compile.compile(
        str(path), cfile=importlib.util.cache_from_source(str(path)), doraise=True,
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
    )  # fmt: skip


CHECK = "import sys; m = sys.modules.get('npu_compat'); print(bool(getattr(m, 'is_active', bool)()), getattr(sys.modules.get('sitecustomize'), 'IMAGE_MARK', None))"


def test_a_stale_unchecked_hash_cache_does_not_outlive_install_or_uninstall(site):
    # Python never compares an unchecked-hash .pyc with its source: left in
    # __pycache__, it kept running the previous file after install, and
    # npu-compat's after uninstall.
    (site / "sitecustomize.py").write_bytes(PREVIOUS)
    _compile_unchecked(site / "sitecustomize.py")
    assert python_in(site, CHECK).stdout.split()[-2:] == ["False", "kept"]  # the cache is in use
    assert cli("install", "--site-dir", str(site)).returncode == 0
    assert python_in(site, CHECK).stdout.splitlines() == ["image sitecustomize ran", "True kept"]
    _compile_unchecked(site / "sitecustomize.py")  # now a cache of npu-compat's file
    assert cli("uninstall", "--site-dir", str(site)).returncode == 0
    assert python_in(site, CHECK).stdout.splitlines() == ["image sitecustomize ran", "False kept"]
    assert (site / "sitecustomize.py").read_bytes() == PREVIOUS
    record_cases("site dir: a stale unchecked-hash cache outlives neither install nor uninstall", 2)


def test_install_warns_when_the_site_dir_is_not_on_sys_path(site):
    r = cli("install", "--site-dir", str(site))  # a temporary directory: on no sys.path
    assert r.returncode == 0
    warnings = [line for line in r.stderr.splitlines() if "not on sys.path" in line]
    assert len(warnings) == 1 and str(site) in warnings[0], r.stderr
    cli("uninstall", "--site-dir", str(site))
    on_path = subprocess.run(
        [sys.executable, "-m", "npu_compat", "install", "--site-dir", str(site)],
        env=clean_env(PYTHONPATH=str(site)), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert on_path.returncode == 0 and on_path.stderr == ""
    record_cases("site dir: one warning exactly when --site-dir is not on sys.path", 2)


def _venv_with_npu_compat(tmp_path):
    """A fresh venv with a copy of npu_compat in its site-packages, as pip would put it: (python, purelib)."""
    import shutil

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True, env=clean_env(),
    ).stdout.strip()  # fmt: skip
    shutil.copytree(os.path.dirname(npu_compat.__file__), os.path.join(purelib, "npu_compat"),
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    return python, purelib


def test_the_installed_file_runs_under_I_and_E_but_not_S(tmp_path):
    # -I and -E ignore the environment, not site-packages: the install route
    # still activates; -S skips sitecustomize altogether (documented).
    python, _ = _venv_with_npu_compat(tmp_path)
    env = clean_env(PYTHONDONTWRITEBYTECODE="1")
    assert subprocess.run([python, "-m", "npu_compat", "install"], env=env, capture_output=True, cwd=tmp_path).returncode == 0
    code = "import sys; m = sys.modules.get('npu_compat'); print(m.route() if m else None)"
    got = {
        flag: subprocess.run([python, *flag, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path).stdout.strip()
        for flag in ((), ("-I",), ("-E",), ("-S",))
    }
    assert got == {(): "sitecustomize", ("-I",): "sitecustomize", ("-E",): "sitecustomize", ("-S",): "None"}
    record_cases("site dir: the installed file under -I, -E, -S", 3)


@pytest.mark.parametrize("leftover", ["nothing", "an empty package directory"])
def test_pip_uninstall_before_npu_compat_uninstall_leaves_a_harmless_file(tmp_path, leftover):
    # An environment where npu_compat was pip-installed, `npu-compat install`
    # ran, then `pip uninstall npu-compat` removed the package but not the
    # sitecustomize.py it never listed: every start must stay silent and the
    # image's own sitecustomize must still run.
    import shutil

    python, purelib = _venv_with_npu_compat(tmp_path)
    with open(os.path.join(purelib, "sitecustomize.py"), "wb") as f:
        f.write(PREVIOUS)
    env = clean_env(PYTHONDONTWRITEBYTECODE="1")
    r = subprocess.run([python, "-m", "npu_compat", "install"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    shutil.rmtree(os.path.join(purelib, "npu_compat"))  # what pip uninstall does
    if leftover != "nothing":
        os.makedirs(os.path.join(purelib, "npu_compat", "bootstrap"))
    r = subprocess.run([python, "-c", CHECK], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.splitlines() == ["image sitecustomize ran", "False kept"]
    record_cases("site dir: left behind by pip uninstall, silent and still chaining", 1)
