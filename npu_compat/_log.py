"""Logging without paying for ``import logging`` until something is said.

``import npu_compat`` runs in every process of an NPU image; most never log.
"""

import sys

LOGGER_NAME = "npu_compat"
_said = set()


def _logger():
    import logging

    return logging.getLogger(LOGGER_NAME)


def debug(msg, *args):
    # Skip even the logging import when nobody could be listening.
    if "logging" in sys.modules:
        _logger().debug(msg, *args)


def info(msg, *args):
    _logger().info(msg, *args)


def warning(msg, *args):
    _logger().warning(msg, *args)


def warning_once(key, msg, *args):
    """One WARNING per key and process: bad settings are read many times."""
    if key in _said:
        return
    _said.add(key)
    _logger().warning(msg, *args)


def short(value, limit=60):
    """A value as it can be quoted in a one-line message."""
    text = ascii(value)
    return text if len(text) <= limit else text[: limit - 3] + "...'"
