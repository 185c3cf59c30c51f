"""The README cannot drift from the code: patch table, set-up commands, watched packages."""

import os
import re

import npu_compat
from npu_compat import registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme():
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


def test_readme_patch_table_is_the_registrys():
    text = readme()
    table = text.split("<!-- patch-table:start -->\n", 1)[1].split("\n<!-- patch-table:end -->", 1)[0]
    assert table == registry.patch_table(), "regenerate the README table from npu_compat.registry.patch_table()"


def command(tag):
    m = re.search(rf"<!-- command:{tag} -->\n```sh\n(.*?)\n```", readme(), re.S)
    assert m, f"README lacks the {tag} command block"
    return m.group(1)


def test_ci_runs_the_readmes_two_commands_verbatim():
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci = f.read()
    assert "readme_command main" in ci and "readme_command tests" in ci
    assert "torch==2.13.0" in command("main")  # never a plain `pip install torch` here
    assert "pytest" in command("tests") and "NPU_COMPAT_SGLANG_PYTHON" in command("tests")


def test_watched_packages_match_the_registry_targets():
    tops = {m.partition(".")[0] for m in registry.target_modules()}
    assert set(npu_compat.WATCHED_PACKAGES) == tops


def test_every_record_is_sound_and_names_are_unique():
    patches, errors = registry.load()
    assert errors == ()
    assert len({p.name for p in patches}) == len(patches) >= 2
    for p in patches:
        assert p.problem() == ""
        mod, _, attr = p.impl.partition(":")
        assert mod.startswith("npu_compat.impl.")
