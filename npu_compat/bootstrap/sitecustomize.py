"""npu_compat's bootstrap: activates npu_compat, then runs the next sitecustomize.

This directory goes first on PYTHONPATH (``npu-compat run``, an image's
``ENV PYTHONPATH``, or inherited from a parent where npu_compat is active), so
Python imports this file at start-up instead of any other sitecustomize.  It
activates npu_compat and then imports the sitecustomize that would have run
without it, so an image's own start-up code keeps working, exactly once.

Any interpreter that inherits PYTHONPATH reads this file, Python 2.7
included: it must parse there (no f-strings, no annotations) and must not
import npu_compat where npu_compat cannot run.
"""


def _npu_compat_bootstrap():
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    # Read before importing npu_compat, whose own activation sets it.
    origin = os.environ.get("NPU_COMPAT_ORIGIN")
    npu_compat = None
    if sys.version_info >= (3, 6):  # older ones cannot even parse npu_compat
        try:
            import npu_compat
        except ImportError:
            # An interpreter without npu_compat inherited this PYTHONPATH: nothing to do.
            npu_compat = None
        except Exception as exc:  # an npu_compat this interpreter cannot run
            sys.stderr.write("npu_compat: not activated: %s: %s\n" % (type(exc).__name__, exc))
            npu_compat = None
    if npu_compat is not None and callable(getattr(npu_compat, "activate", None)):
        try:
            if not origin:
                route = "sitecustomize"
            elif origin == "run:%d" % os.getpid():  # `npu-compat run` exec'd into this very process
                route = "run"
            else:
                route = "inherited"
            npu_compat.activate(route=route)
        except Exception as exc:  # never break interpreter start-up
            sys.stderr.write("npu_compat: activation failed: %s: %s\n" % (type(exc).__name__, exc))

    # Chain: hide this directory and this module, import sitecustomize again
    # (Python finds the next one along sys.path), then put this directory
    # back where it was, keeping whatever the chained module added.
    mine = sys.modules.pop("sitecustomize", None)
    ours = [(i, p) for i, p in enumerate(sys.path) if _same(p, here)]
    for _, p in reversed(ours):
        sys.path.remove(p)
    try:
        import sitecustomize  # noqa: F401  (the image's own, if any)
    except ImportError as exc:
        # Python 3 names the missing module; Python 2 only says it.
        if getattr(exc, "name", None) != "sitecustomize" and str(exc) != "No module named sitecustomize":
            _report(exc)
    except Exception as exc:
        _report(exc)
    finally:
        for i, p in ours:
            sys.path.insert(i, p)
        if "sitecustomize" not in sys.modules and mine is not None:
            sys.modules["sitecustomize"] = mine


def _same(entry, here):
    import os

    return os.path.normcase(os.path.abspath(entry or os.curdir)) == os.path.normcase(here)


def _report(exc):
    # What site.py itself prints when a sitecustomize fails.
    import sys

    sys.stderr.write("Error in sitecustomize; set PYTHONVERBOSE for traceback:\n%s: %s\n" % (type(exc).__name__, exc))


_npu_compat_bootstrap()
