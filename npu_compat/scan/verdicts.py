"""The verdicts a site can get, and which of them each ``--fail-on`` policy fails on."""

GUARDED = "guarded"
NPU_BACKEND = "npu-backend"
UNGUARDED = "unguarded"
UNKNOWN = "unknown"
VERDICTS = (GUARDED, NPU_BACKEND, UNGUARDED, UNKNOWN)

MEANING = {
    GUARDED: "NPU never compiles this site (disable= true on NPU, or code that NPU never reaches)",
    NPU_BACKEND: "NPU compiles it with its own backend (torchair via get_compiler_backend()): "
    "not safe, upstream has had to disable such sites on NPU",
    UNGUARDED: "compiled with an ordinary backend (inductor by default) on NPU too; "
    "backend=\"eager\" sites are unguarded too, and their reason says that no code is generated",
    UNKNOWN: "cannot tell statically (unresolvable name, **kwargs); the reason says why",
}

# Each policy includes the ones before it: a gate that fails on torchair
# sites also fails on inductor ones, and "unknown" fails on everything not
# known to be guarded (and on files that could not be read or parsed).
FAIL_POLICIES = ("unguarded", "npu-backend", "unknown", "never")
_FAILING = {
    "never": (),
    "unguarded": (UNGUARDED,),
    "npu-backend": (UNGUARDED, NPU_BACKEND),
    "unknown": (UNGUARDED, NPU_BACKEND, UNKNOWN),
}


def failing_verdicts(policy):
    """The verdicts that make ``policy`` fail (ValueError for an unknown policy)."""
    try:
        return _FAILING[policy]
    except KeyError:
        raise ValueError(f"unknown --fail-on policy {policy!r} (choose from {', '.join(FAIL_POLICIES)})") from None


def fails_on_errors(policy):
    """Whether unreadable or unparsable files fail ``policy``."""
    return policy == "unknown"
