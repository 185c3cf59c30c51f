"""The support matrix: one command per leg (``nox -s NAME``; ``nox -l`` lists them).

Legs:

- ``notorch-3.10`` ... ``notorch-3.13``: everything that needs no torch
  (import cost and side effects, activation routes, status without torch,
  install/uninstall, scan, docs, logging) with torch absent from the venv.
- ``torch-2.1`` (Python 3.10), ``torch-2.13``, ``torch-2.14`` (Python 3.11):
  the whole suite but the real-sglang tests, so everything that touches torch (the patch's identity on
  NPU, wrappers, dynamo counters, torch.multiprocessing ranks).  2.13.0 is the CPU build on this
  machine's disk, 2.14.1 a CUDA build on disk (about 5.5 GB installed);
  2.1.0 is a CUDA build from PyPI (about 2.5 GB to download).
- ``wrapt-1.15``: the wrapt floor under the hook, with torch 2.13.0 (wrapt
  1.14 loses about 3 in 100 activations that race an import: see
  docs/support.md).
- ``package``: sdist and wheel built with the floor setuptools (77), their
  contents, ``twine check``.

The real-sglang tests are not a leg here: they run on the torch sglang
needs, in the venv scripts/make_sglang_venv.sh builds (the README's test
command).  ``pytest`` options after ``--`` replace the default ``-n 2 --durations=8``.
"""

import glob
import os

import nox

nox.options.error_on_missing_interpreters = True
# `nox` alone runs the legs CI runs (the README's matrix command names them too).
nox.options.sessions = ["notorch-3.10", "notorch-3.13", "wrapt-1.15", "package"]

# pyenv's shims answer only for its selected version: put every installed
# version's own bin directory first so `python3.X` resolves for each leg.
_PYENV = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.*/bin")))
if _PYENV:
    os.environ["PATH"] = os.pathsep.join(_PYENV + [os.environ.get("PATH", "")])

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]

# Tests that need an importable torch (most apply a patch on a simulated NPU,
# which installs torch.compile(impl, disable=True)).  The no-torch legs leave
# out exactly these; a new test that needs torch fails there until it is
# listed here (or the test_hook.py way: a whole file).
NEEDS_TORCH = [
    "tests/test_impl.py",
    "tests/test_bench.py",
    "tests/test_guards.py",
    "tests/test_fallback.py",
    "tests/test_hook.py",
    "tests/test_real_guards.py",
    "tests/test_audit_cli.py::test_audit_of_real_processes_at_once_plus_bad_lines",
    "tests/test_reportfile.py",
    "tests/test_walk_robust.py",
    "tests/test_zygote.py",
    "tests/test_fallback_units.py",
    "tests/test_speed.py",
    "tests/test_report_live.py::test_a_process_killed_after_a_fallback_is_counted_with_it",
    "tests/test_report_live.py::test_a_running_processes_fallback_is_in_the_report_within_a_second",
    "tests/test_report_live.py::test_schedulers_ended_by_sglangs_kill_process_tree_are_counted_with_their_fallbacks",
    "tests/test_report_live.py::test_a_symlink_is_never_followed",
    "tests/test_report_live.py::test_a_created_report_is_0600_an_existing_keeps_its_mode_and_no_option_value_is_recorded",
    "tests/test_scan_patch_style.py::test_the_added_import_precedes_the_flag_that_uses_it",
    "tests/test_core.py::test_npu_prefix_hook_before_import_applies_and_compiles_nothing",
    "tests/test_core.py::test_npu_prefix_target_imported_first_then_npu_compat",
    "tests/test_core.py::test_off_npu_every_attribute_is_upstreams_own",
    "tests/test_core.py::test_npu_other_upstream_states",
    "tests/test_core.py::test_strict_turns_incompatible_into_a_clear_error",
    "tests/test_core.py::test_strict_errors_name_the_value_that_turned_it_on",
    "tests/test_core.py::test_a_mistyped_strict_value_warns_when_npu_compat_arms",
    "tests/test_core.py::test_target_import_error_reaches_the_importer_unchanged",
    "tests/test_core.py::test_disabled_does_nothing",
    "tests/test_core.py::test_disable_one_patch_by_name",
    "tests/test_core.py::test_npu_compat_device_setting",
    "tests/test_core.py::test_deactivate_restores_and_activate_again_works",
    "tests/test_core.py::test_is_npu_never_raises",
    "tests/test_activation.py::test_spawn_and_forkserver_workers_of_a_main_guarded_launcher",
    "tests/test_activation.py::test_four_gloo_ranks_started_by_torch_multiprocessing_spawn",
    "tests/test_activation.py::test_run_patches_a_process_that_never_imports_npu_compat",
    "tests/test_activation.py::test_plugin_entry_point_as_sglangs_loader_calls_it",
    "tests/test_activation.py::test_plugin_respects_npu_compat_disable",
    "tests/test_activation.py::test_patch_names_in_npu_compat_disable_are_case_insensitive",
    "tests/test_reliability.py::test_status_reads_the_live_module_and_deactivate_spares_a_later_replacement",
    "tests/test_reliability.py::test_a_not_npu_answer_before_torch_npu_loads_is_not_kept",
    # On a forced NPU these apply a patch, which installs torch.compile(impl, disable=True).
    "tests/test_reliability.py::test_sixteen_importers_against_activate_deactivate_activate",
    "tests/test_reliability.py::test_each_fault_degrades_to_a_state_with_a_reason",
    "tests/test_reliability.py::test_no_deadlock_when_another_thread_imports_what_npu_compat_needs",
    "tests/test_reliability.py::test_looking_sglang_up_imports_nothing_and_arms_nothing",
    "tests/test_reliability.py::test_status_keeps_reporting_an_applied_patch_after_the_setting_changes",
    "tests/test_log.py::test_the_patch_decision_is_visible_without_configuring_logging",
    "tests/test_log.py::test_debug_on_npu_names_each_replacement_and_the_walk",
]
NOT_A_LEG = ["--ignore-glob=tests/test_real_*.py"]  # the real-sglang tests: see the module docstring


# Every leg installs the checkout editable: the tests' child processes run
# with the checkout as their working directory, so `import npu_compat` there
# finds the checkout's package first, and the venv must hold the same one.
# What a regular install gets (sdist, wheel) is the `package` leg's job.


def _pytest(session, *args):
    opts = session.posargs or ["-n", "2", "--durations=8"]
    session.run("python", "-m", "pytest", "-p", "no:cacheprovider", *opts, *NOT_A_LEG, *args)


def _torch_absent(session):
    session.run(
        "python", "-c",
        "import importlib.util, sys; sys.exit('torch is installed in this leg' if importlib.util.find_spec('torch') else 0)",
    )


@nox.session(python=PYTHONS)
def notorch(session):
    """Everything that needs no torch, on each supported Python, torch absent."""
    session.install("-e", ".[test]")
    _torch_absent(session)
    # A whole file is ignored (it may import torch at the top), a test deselected.
    _pytest(session, *(f"--deselect={t}" if "::" in t else f"--ignore={t}" for t in NEEDS_TORCH))


# (leg name, Python, torch): the oldest torch supported and the newest here.
TORCH_LEGS = [("torch-2.1", "3.10", "2.1.0"), ("torch-2.13", "3.11", "2.13.0"), ("torch-2.14", "3.11", "2.14.1")]


def _torch_leg(name, python, version):
    @nox.session(name=name, python=python)
    def leg(session):
        # torch 2.1 was built against numpy 1, and its inductor imports pkg_resources (setuptools < 81)
        extra = ["numpy<2", "setuptools>=77,<81"] if version.startswith("2.1.") else []
        session.install(f"torch=={version}", *extra, "-e", ".[test]")
        session.run("python", "-c", f"import torch; v = torch.__version__; assert v.split('+')[0] == {version!r}, v")
        _pytest(session)

    leg.__doc__ = f"The whole suite (all that touches torch), with torch {version} on Python {python}."
    return leg


for _leg in TORCH_LEGS:
    _torch_leg(*_leg)


WRAPT_FLOOR = "1.15.0"
# The tests that lean on wrapt's post-import hook hardest: the ordering
# matrix, the races and faults, reload and re-import.  (The torch legs run
# everything else through the hook, with the newest wrapt.)
WRAPT_TESTS = ["tests/test_core.py", "tests/test_reliability.py", "tests/test_hook.py"]


@nox.session(name="wrapt-1.15", python="3.11")
def wrapt_floor(session):
    """The oldest wrapt allowed, under the tests that lean on its hook hardest."""
    session.install("torch==2.13.0", f"wrapt=={WRAPT_FLOOR}", "-e", ".[test]")
    session.run("python", "-c", f"import wrapt; assert wrapt.__version__ == {WRAPT_FLOOR!r}, wrapt.__version__")
    _pytest(session, *WRAPT_TESTS)


@nox.session(python="3.11")
def package(session):
    """sdist and wheel built with the floor setuptools: contents, metadata, twine check."""
    session.install("setuptools==77.0.3", "-e", ".[test]")  # the test builds with this venv's setuptools
    session.run("python", "-m", "pytest", "-p", "no:cacheprovider", "tests/test_packaging.py", *session.posargs)
