"""The ``NPU_COMPAT_*`` environment variables, parsed defensively.

Any string is accepted: a value that is not understood gets one WARNING and
the documented default, never an exception.  Nothing read here is ever used
to import a module or a path.
"""

import os

from npu_compat import _log

from npu_compat import DISABLE_ALL

TRUE = frozenset(("1", "true", "yes", "on"))
FALSE = frozenset(("", "0", "false", "no", "off"))

# Device names NPU_COMPAT_DEVICE accepts as "not an NPU".
OTHER_DEVICES = frozenset(
    ("cpu", "cuda", "rocm", "hip", "xpu", "mps", "mtia", "musa", "mlu", "hpu", "xla", "meta", "gpu")
)


def _get(name):
    return os.environ.get(name, "")


def _norm(value):
    return value.strip().lower()


def flag(name):
    """A boolean variable: TRUE/FALSE spellings; anything else warns and is false."""
    raw = _get(name)
    value = _norm(raw)
    if value in TRUE:
        return True
    if value not in FALSE:
        _log.warning_once(
            (name, raw), "%s=%s is not understood (use 1 or 0); treating it as 0", name, _log.short(raw)
        )
    return False


def strict():
    return flag("NPU_COMPAT_STRICT")


def strict_note():
    """How the user turned strict mode on, for its errors: ``(NPU_COMPAT_STRICT=true)``."""
    return f"(NPU_COMPAT_STRICT={_get('NPU_COMPAT_STRICT').strip()})"


def check_at_activation(known_names=()):
    """Read every setting once when npu_compat arms, so a mistyped value warns now.

    Without this, ``NPU_COMPAT_STRICT=maybe`` was reported only when a patch
    failed: an image's CI with a typo stayed green.
    """
    strict()
    device()
    disabled(set(known_names))


# Every setting npu_compat reads, in the order `npu-compat status` shows them.
SETTINGS = ("EAGER", "STRICT", "REPORT", "FALLBACK", "SPEED", "LOG_LEVEL", "DISABLE", "DEVICE")


def any_set(environ=os.environ):
    """Whether any setting is in the environment (the cheap test ``import npu_compat`` makes)."""
    return any("NPU_COMPAT_" + name in environ for name in SETTINGS)


def did_you_mean(word, known):
    """`` (did you mean NAME?)`` for a near miss among ``known``, else ''."""
    import difflib

    close = difflib.get_close_matches(word.strip().lower(), sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def disabled(known_names=None):
    """Parse NPU_COMPAT_DISABLE -> (everything_disabled, names_disabled).

    ``1``/``true``/``all`` disable npu_compat; otherwise a comma-separated
    list of patch names disables those patches.  Names are compared with the
    registry's case-insensitively (an exact match wins when two known names
    differ only in case) and returned as the registry spells them; they are
    never imported.
    """
    raw = _get("NPU_COMPAT_DISABLE")
    value = _norm(raw)
    if value in DISABLE_ALL:
        return True, frozenset()
    if value in FALSE:
        return False, frozenset()
    names = frozenset(t.strip() for t in raw.split(",") if t.strip())
    if known_names is not None:
        folded = {}
        for known in known_names:
            folded.setdefault(known.casefold(), set()).add(known)
        resolved, unknown = set(), []
        for n in sorted(names):
            if n in known_names:
                resolved.add(n)
            elif n.casefold() in folded:
                resolved |= folded[n.casefold()]
            else:
                unknown.append(n)
        if unknown:
            _log.warning_once(
                ("NPU_COMPAT_DISABLE", raw),
                "NPU_COMPAT_DISABLE names no known patch: %s (known: %s); ignoring %s",
                ", ".join(_log.short(n) + did_you_mean(n, known_names) for n in unknown),
                ", ".join(sorted(known_names)),
                "them" if len(unknown) > 1 else "it",
            )
        names = frozenset(resolved)
    return False, names


def device():
    """Parse NPU_COMPAT_DEVICE -> 'npu', 'other:<name>' or 'auto'."""
    raw = _get("NPU_COMPAT_DEVICE")
    value = _norm(raw)
    if value == "npu":
        return "npu"
    if value in ("", "auto"):
        return "auto"
    if value in OTHER_DEVICES:
        return "other:" + value
    _log.warning_once(
        ("NPU_COMPAT_DEVICE", raw),
        "NPU_COMPAT_DEVICE=%s is not understood (use npu, auto, or a device name such as cpu or cuda); "
        "detecting the device instead",
        _log.short(raw),
    )
    return "auto"
