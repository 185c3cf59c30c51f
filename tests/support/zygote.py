"""A pre-imported parent that forks one child per test scenario (``conftest.run_py``).

Started as ``python tests/support/zygote.py MODULE...``
with a clean environment, it imports MODULE... (torch: about 9 s on a loaded
2-core machine, the cost nearly every child used to pay) and nothing else:
no npu_compat, no sglang, no test support module.  Then, for each request
(one JSON line on stdin), it forks a child that turns itself into what
``python -c CODE ARGS...`` started fresh would be, as far as the tests can see:

- ``os.environ`` is replaced by the request's environment before the code runs;
- ``sys.path`` is rebuilt as a fresh interpreter builds it: ``''`` (``-c``), then
  the request's PYTHONPATH entries, then the interpreter's own (stdlib,
  site-packages: identical here, same interpreter); the import system's
  caches are dropped;
- ``sys.argv`` is ``['-c', *args]``, the cwd is the request's, a new empty
  ``__main__`` module runs the code (so multiprocessing's spawn and forkserver
  children re-run nothing), stdin is /dev/null, stdout and stderr are the
  request's files;
- the code runs at the top level of the child's interpreter, which then ends
  as ``python -c`` ends: an uncaught exception prints its traceback and exits
  1, ``SystemExit`` keeps its code, non-daemon threads are joined and atexit
  handlers run.

What stays different, and why that is safe for the scenarios sent here
(``conftest.run_py`` decides; anything else gets a fresh interpreter):
MODULE... and what they import are in ``sys.modules`` before the code starts,
so a scenario comes here only if its code imports torch before npu_compat or
sglang, and does not look at ``sys.modules`` before that; environment
variables read when torch is imported (``TORCH*``, ``PYTORCH*``, ``OMP_*``...)
or at interpreter start-up (``PYTHON*`` but PYTHONPATH) send a scenario to a
fresh interpreter, as does a ``sitecustomize``/``usercustomize`` on its PYTHONPATH.

Fork safety: the parent never runs a torch op (so no OpenMP pool exists),
starts no Python thread (checked before each fork), and holds no lock while
forking.  numpy's OpenBLAS starts idle worker threads at import; OpenBLAS
registers a ``pthread_atfork`` handler that stops them before a fork, so the
child starts them again on its own.
"""

import builtins
import json
import os
import sys
import threading

# The interpreter's own sys.path without this script's directory (first) and
# the parent's PYTHONPATH entries: the tail every child's path ends with.
_BASE_PATH = None


def _base_path():
    own = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    path = list(sys.path[1:])
    for p in own:  # PYTHONPATH entries come first, in order
        if path and os.path.abspath(path[0]) == os.path.abspath(p):
            path.pop(0)
    return path


def _become_child(req):
    """In the forked child: become `python -c CODE ARGS` started fresh, then run CODE."""
    import importlib

    fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)
    for target, name in ((1, "stdout"), (2, "stderr")):
        fd = os.open(req[name], os.O_WRONLY | os.O_TRUNC | os.O_CREAT, 0o600)
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    extra = [p for p in req["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:] = [""] + [os.path.abspath(p) for p in extra] + _BASE_PATH
    sys.path_importer_cache.clear()
    importlib.invalidate_caches()
    sys.argv[:] = ["-c", *req["args"]]
    main = type(sys)("__main__")
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    return compile(req["code"], "<string>", "exec"), main.__dict__


def _exit_code(exc):
    # What Python makes of an uncaught SystemExit.
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    sys.stderr.write(f"{code}\n")
    return 1


def _run_as_main(code, ns):
    """Run the scenario and end the process as ``python -c`` ends (Py_RunMain, then Py_FinalizeEx).

    An uncaught exception goes to ``sys.excepthook`` (its traceback starts at
    the scenario's ``<string>``), exit status 1; then non-daemon threads are
    joined, atexit handlers run, ``__main__``'s globals are released (their
    ``__del__``, files they left open), stdout and stderr flushed.  What is left
    out is tearing down every module: that touches each page the child shares
    with the zygote (2-3 s with torch loaded), and nothing a test reads comes of it.
    """
    import atexit
    import gc

    rc = 0
    try:
        exec(code, ns)  # noqa: S102 - the test's own scenario code
    except SystemExit as exc:
        rc = _exit_code(exc)
    except BaseException as exc:  # noqa: BLE001 - as the interpreter does
        tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
        sys.excepthook(type(exc), exc.with_traceback(tb), tb)
        rc = 1
    try:
        threading._shutdown()
        atexit._run_exitfuncs()
        ns.clear()
        gc.collect()
    finally:
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except Exception:  # noqa: BLE001 - a closed stream: as at interpreter exit
                pass
        os._exit(rc)


def serve():
    """The parent's loop: one JSON request a line on stdin, one JSON answer a line on stdout."""
    global _BASE_PATH
    for name in sys.argv[1:]:
        __import__(name)
    _BASE_PATH = _base_path()
    # What the parent imported is never garbage: keep the children's collector
    # (and the refcount-free scan of it) off those pages (copy-on-write).
    import gc

    gc.collect()
    gc.freeze()
    inp, out = os.fdopen(os.dup(0), "r"), os.fdopen(os.dup(1), "w")
    top = sorted({name.partition(".")[0] for name in sys.modules})
    out.write(json.dumps({"ready": os.getpid(), "top_level": top}) + "\n")
    out.flush()
    for line in inp:
        req = json.loads(line)
        if threading.active_count() != 1:  # never fork with a Python thread running
            out.write(json.dumps({"error": f"{threading.active_count()} threads in the zygote"}) + "\n")
            out.flush()
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            inp.close()
            out.close()
            code, ns = _become_child(req)
            del req, line
            _run_as_main(code, ns)  # never returns
        out.write(json.dumps({"pid": pid}) + "\n")
        out.flush()
        _, status = os.waitpid(pid, 0)
        out.write(json.dumps({"status": os.waitstatus_to_exitcode(status)}) + "\n")
        out.flush()
    os._exit(0)


if __name__ == "__main__":
    serve()
