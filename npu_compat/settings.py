"""Every setting npu_compat reads, with its effective value: what ``npu-compat status`` shows.

Reading them all at activation (:func:`check_settings`) makes a mistyped
value give its one WARNING at once, not only once sglang loads.
"""

from npu_compat import _env, _log


def settings():
    """[(NAME, effective value)] for each setting; a mistyped one warns once (the WARNING activation gives)."""
    from npu_compat import WATCHED_PACKAGES, audit, registry, speed

    known = {r.name for r in registry.all_patches()}
    eager = audit.parse_eager(_env._get("NPU_COMPAT_EAGER"), known, WATCHED_PACKAGES)
    eager_text = ", ".join(
        [eager.mode] * bool(eager.mode) + sorted(eager.names) + [f"{m}:{q}" for m, q in sorted(eager.sites)]
        + [f"@{f}" for f in eager.files]
    )  # fmt: skip
    level, bad = _log.requested_level()
    if bad:
        _log.check_level()
    names = {v: k for k, v in _log.LEVELS.items() if k != "warn"}
    off, disabled_names = _env.disabled(known)
    dev = _env.device()
    return [
        ("EAGER", eager_text or "-"),
        ("STRICT", "1" if _env.strict() else "0"),
        ("REPORT", _env._get("NPU_COMPAT_REPORT").strip() or "-"),
        ("FALLBACK", _fallback_value(audit.fallback_enabled())),
        ("SPEED", speed.read_setting() or "off"),
        ("LOG_LEVEL", names.get(level, "-")),
        ("DISABLE", "all" if off else ", ".join(sorted(disabled_names)) or "-"),
        ("DEVICE", dev.partition(":")[2] or dev),
    ]


def _fallback_value(on):
    """``1``/``0``; with torch imported and lacking what the fallback needs, why it is off anyway."""
    if not on:
        return "0"
    from npu_compat import fallback

    why = fallback.unavailable_cheaply()
    return f"1, but {why}" if why else "1"


def check_settings():
    """Read every setting now, so each mistyped value gives its one WARNING at activation."""
    try:
        settings()
    except Exception as exc:  # never fail the importer
        _log.warning("npu_compat: could not read the settings: %s: %s", type(exc).__name__, exc)
