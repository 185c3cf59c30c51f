"""Logging without paying for ``import logging`` until something is said.

``import npu_compat`` runs in every process of an NPU image; most never log.

``NPU_COMPAT_LOG_LEVEL`` (``debug``, ``info``, ``warning``, ``error``) makes
npu_compat's own lines visible on stderr in a process whose host never
configured logging: a handler on the ``npu_compat`` logger only, set up the
first time something is said.  The records still propagate, so a host that
collects logs keeps getting them.
"""

import os
import sys

LOGGER_NAME = "npu_compat"
LEVEL_VAR = "NPU_COMPAT_LOG_LEVEL"
# Numbers as the logging module defines them (not imported for this).
LEVELS = {"debug": 10, "info": 20, "warning": 30, "warn": 30, "error": 40}
FORMAT = "npu_compat %(levelname)s [pid %(process)d] %(message)s"
_said = set()
_setup_done = False


def requested_level():
    """(level number or 0 when unset, raw value when it is not understood or '')."""
    raw = os.environ.get(LEVEL_VAR, "")
    value = raw.strip().lower()
    if not value:
        return 0, ""
    level = LEVELS.get(value)
    return (level, "") if level else (0, raw)


def _setup(logging, logger):
    # Once per process.  A handler of ours already on the logger (a reloaded
    # module, a second interpreter state) is reused, never doubled.
    global _setup_done
    _setup_done = True
    level, bad = requested_level()
    if bad:
        check_level()
        return
    if not level:
        return
    logger.setLevel(level)
    for handler in logger.handlers:
        if getattr(handler, "npu_compat_stderr", False):
            handler.setLevel(level)
            return

    class _Stderr(logging.StreamHandler):
        """Writes to whatever sys.stderr is at the time, as logging.lastResort does."""

        npu_compat_stderr = True

        def __init__(self):
            logging.Handler.__init__(self, level)

        @property
        def stream(self):
            return sys.stderr

    class _Formatter(logging.Formatter):
        def formatMessage(self, record):
            # Most messages already start with the package's name; say it once.
            return super().formatMessage(record).replace("] npu_compat: ", "] ", 1)

    handler = _Stderr()
    handler.setFormatter(_Formatter(FORMAT))
    logger.addHandler(handler)


def check_level():
    """One WARNING when NPU_COMPAT_LOG_LEVEL is not understood."""
    _, bad = requested_level()
    if bad:
        warning_once(
            (LEVEL_VAR, bad),
            "%s=%s is not understood (use debug, info, warning or error); ignoring it",
            LEVEL_VAR,
            short(bad),
        )


def _logger():
    import logging

    logger = logging.getLogger(LOGGER_NAME)
    if not _setup_done:
        _setup(logging, logger)
    return logger


def _listened():
    # Nobody could be listening when neither the host (logging not imported)
    # nor NPU_COMPAT_LOG_LEVEL asked: then even the logging import is skipped.
    return _setup_done or "logging" in sys.modules or bool(os.environ.get(LEVEL_VAR))


def debug(msg, *args):
    if _listened():
        _logger().debug(msg, *args)


def info(msg, *args):
    if _listened():
        _logger().info(msg, *args)


def warning(msg, *args):
    _logger().warning(msg, *args)


_captured = None  # a list while capture_warnings() runs


def warning_once(key, msg, *args):
    """One WARNING per key and process: bad settings are read many times."""
    if key in _said:
        return
    _said.add(key)
    if _captured is not None:
        _captured.append(msg % args)
        return
    _logger().warning(msg, *args)


def capture_warnings(fn):
    """(fn(), [the WARNING lines warning_once would have logged meanwhile]): for `npu-compat status`."""
    global _captured
    before, _captured = _captured, []
    try:
        return fn(), _captured
    finally:
        _captured = before


def short(value, limit=60):
    """A value as it can be quoted in a one-line message."""
    text = ascii(value)
    return text if len(text) <= limit else text[: limit - 3] + "...'"
