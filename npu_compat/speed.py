"""``NPU_COMPAT_SPEED``: measure each compiled sglang site against eager where it runs.

On NPU torch.compile can be slower than eager (small helpers pay dynamo's
guards and kernel launches that eager avoids), and which side a site is on
depends on the device, the backend and the shapes: so it is measured in
the process that runs it, per site, whole calls.

* ``check``: once a site has compiled and run successfully, its next calls
  alternate between compiled and eager: each call runs exactly one of them,
  so nothing runs twice.  An eager turn runs the site's own function with
  dynamo off for that code (torch's per-code frame strategy, set for the
  call and put back after it), so it costs what the plain function costs;
  a compiled turn is torch's compiled call, guards included.  Both are
  timed from torch's own compile wrapper (its enter/exit hooks), so no
  frame of npu_compat's is added to the call.  Only calls with the input
  shapes of the first timed call are timed.  The result goes into the
  site's audit entry (``speed``); the site stays compiled.
* ``pick``: the same, then the site keeps the faster variant for the rest
  of the process.  Eager wins only when its median is faster by more than
  :data:`MARGIN` and beyond the spread (eager's upper quartile below
  compiled's lower quartile).  A site that keeps compiled loses its hook;
  one that picks eager keeps it (two calls per site call) to stay compiled
  under graph capture.

Timing uses the device's own events on the current stream where the inputs
live on a device that has them (``torch.npu.Event``, ``torch.cuda.Event``),
read back once they complete (never a host synchronisation on the call
path), and wall time where they do not (CPU tensors: the simulated NPU).

Calls made while the device captures a graph are a separate regime (replay
removes the launch cost that makes small helpers lose): they are never
timed and always run compiled, as sglang made them; what was measured
outside capture applies outside capture only.  ``fullgraph=True`` sites
are not measured (torch raises after a call in which no frame compiled).

Off (the default) nothing of this exists: no hook is added anywhere.
"""

import os
import time
from types import FunctionType, MethodType

from npu_compat import _log

VAR = "NPU_COMPAT_SPEED"
MODES = ("check", "pick")
MIN_SAMPLES = 20  # per variant, after warm-up: enough for a median and quartiles
MAX_SAMPLES = 200  # per variant: at about 100 us a call, 0.04 s of serving
WARMUP = 2  # first calls of each variant, not counted (allocations, lazy set-up)
MARGIN = 0.10  # eager must be 10% faster: run-to-run jitter here is about 5%
GIVE_UP = 20000  # calls of other shapes before a graph stops waiting for its shape

MODE = [None]  # set by core on NPU set-up: None, "check" or "pick"
_meters = []  # every meter attached in this process (deactivate() removes them)


def read_setting():
    """NPU_COMPAT_SPEED: None (off), "check" or "pick"; anything else gets one WARNING and means off."""
    raw = os.environ.get(VAR, "")
    value = raw.strip().lower()
    if value in ("", "0", "off", "no", "false", "none"):
        return None
    if value in MODES:
        return value
    _log.warning_once(
        (VAR, raw), "npu_compat: %s=%s not understood (use check or pick); speed checks stay off", VAR, _log.short(raw)
    )
    return None


def _quartiles(xs):
    s = sorted(xs)
    q = len(s) // 4
    return s[q], s[-q - 1]


class Meter:
    """One site's measurement, then (under ``pick``) its choice: an enter/exit hook of torch's wrapper."""

    def __init__(self, entry, code, hooks, pick):
        self.entry, self.code, self.hooks, self.pick = entry, code, hooks, pick
        self.capturing = None  # the device modules' is_current_stream_capturing, found on the first timed call
        self.sig, self.turn, self.other, self.eager, self.timer = None, False, 0, False, None
        self.samples = {"compiled": [], "eager": []}
        self.pending = []  # (variant, start event, end event) not read back yet
        self.calls = {"compiled": 0, "eager": 0}  # calls each variant served while measuring
        self.dropped = {"compiled": 0, "eager": 0}

    def __call__(self):
        """torch's compile wrapper calls this before each call; what it returns, after."""
        if not self.entry.ran or self.entry.fell_back is not None:
            return _nothing
        if self.eager:  # picked: as cheap as it can be (no frame reading)
            if self._capturing():
                return _nothing  # graph capture: compiled, as sglang made it
            _set_strategy(self.code, _SKIP[0])
            return self._back_to_default
        t = time.perf_counter_ns()
        args = _call_args()
        if args is None:
            return _nothing
        if self.capturing is None:
            self.capturing = _capture_checks(args)
        if self._capturing():
            return _nothing  # graph capture: as sglang made it, never timed
        sig = _signature(args)
        if self.sig is None:
            self.sig = sig
        elif sig != self.sig:
            self.other += 1
            if self.other > GIVE_UP:
                self._decide()
            return _nothing
        variant = "eager" if self.turn else "compiled"
        self.turn = not self.turn
        self.calls[variant] += 1
        if variant == "eager":
            _set_strategy(self.code, _SKIP[0])
        events = _events(args)
        if events is not None:
            self.timer = "device events"
            start, end = events
            start.record()

            def done():
                end.record()
                if variant == "eager":
                    _set_strategy(self.code, _DEFAULT[0])
                self.pending.append((variant, start, end))
                self._collect()

            return done
        self.timer = "wall"  # from the hook's start: what the hook costs is in both variants

        def done():
            if variant == "eager":
                _set_strategy(self.code, _DEFAULT[0])
            self._add(variant, (time.perf_counter_ns() - t) / 1e3)

        return done

    def _back_to_default(self):
        _set_strategy(self.code, _DEFAULT[0])

    def _capturing(self):
        for fn in self.capturing or ():
            try:
                if fn() is True:
                    return True
            except Exception:
                continue
        return False

    def _collect(self):
        while self.pending:
            variant, start, end = self.pending[0]
            try:
                if not end.query():
                    return
                us = start.elapsed_time(end) * 1e3
            except Exception:
                us = None
            self.pending.pop(0)
            if us is not None:
                self._add(variant, us)

    def _add(self, variant, us):
        if self.samples is None:
            return
        if self.dropped[variant] < WARMUP:
            self.dropped[variant] += 1
            return
        self.samples[variant].append(us)
        c, e = self.samples["compiled"], self.samples["eager"]
        if len(c) >= MIN_SAMPLES and len(e) >= MIN_SAMPLES:
            cq, eq = _quartiles(c), _quartiles(e)
            clear = eq[1] < cq[0] or cq[1] < eq[0]
            if clear or (len(c) >= MAX_SAMPLES and len(e) >= MAX_SAMPLES):
                self._decide()

    def _decide(self):
        import statistics

        if self.samples is None:
            return
        c, e = self.samples["compiled"], self.samples["eager"]
        entry = self.entry
        if c and e:
            mc, me = statistics.median(c), statistics.median(e)
            cq, eq = _quartiles(c), _quartiles(e)
            eager_wins = me * (1 + MARGIN) < mc and eq[1] < cq[0]
            faster = "eager" if eager_wins else ("compiled" if cq[1] < eq[0] or mc < me else "neither")
            picked = ("eager" if eager_wins else "compiled") if self.pick else None
            record = {
                "compiled_us": round(mc, 3),
                "eager_us": round(me, 3),
                "samples": min(len(c), len(e)),
                "spread": {"compiled": [round(cq[0], 3), round(cq[1], 3)], "eager": [round(eq[0], 3), round(eq[1], 3)]},
                "faster": faster,
                "picked": picked,
                "regime": "outside graph capture",
                "timer": self.timer,
            }
        else:
            picked = "compiled" if self.pick else None
            record = {"compiled_us": None, "eager_us": None, "samples": 0, "spread": None, "faster": None,
                      "picked": picked, "regime": "outside graph capture", "timer": self.timer}  # fmt: skip
        self.samples = self.pending = None
        if picked == "eager":
            self.eager = True  # keeps its hook: eager outside capture, compiled under it
        else:
            self.remove()  # nothing of the check stays on the call path
        entry.set_speed(record)
        _log.info(
            "npu_compat: speed of %s: compiled %s us, eager %s us over %d calls each (%s): %s",
            entry.site, record["compiled_us"], record["eager_us"], record["samples"], record["timer"],
            f"picked {picked}" if picked else f"faster: {record['faster']} (check only)",
        )  # fmt: skip

    def remove(self):
        try:
            self.hooks.remove(self)
        except ValueError:
            pass
        if self.eager:
            self.eager = False
            _set_strategy(self.code, _DEFAULT[0])


def _nothing():
    pass


# Dynamo's per-code frame strategies: SKIP (this frame and nested ones run as plain
# Python, the cache is not consulted) and DEFAULT; resolved once, in supported().
_SKIP, _DEFAULT = [None], [None]


def _set_strategy(code, strategy):
    from torch._C._dynamo.eval_frame import set_code_exec_strategy

    global _set_strategy
    _set_strategy = set_code_exec_strategy  # the C function itself from now on
    set_code_exec_strategy(code, strategy)


def _call_args():
    """The positional arguments of the call torch's compile wrapper is making (read from its frame)."""
    import sys

    f = sys._getframe(2)
    for _ in range(4):
        if f is None:
            return None
        if f.f_code.co_name == "compile_wrapper":
            args = f.f_locals.get("args")
            return args if isinstance(args, tuple) else None
        f = f.f_back
    return None


def _signature(args):
    out = []
    for a in args:
        shape = getattr(a, "shape", None)
        out.append(tuple(shape) if shape is not None else type(a))
    return tuple(out)


def _device_module(args):
    import torch

    for a in args:
        dev = getattr(a, "device", None)
        if dev is not None and getattr(dev, "type", "cpu") != "cpu":
            return getattr(torch, dev.type, None)
    return None


def _events(args):
    module = _device_module(args)
    event = getattr(module, "Event", None) if module is not None else None
    if event is None:
        return None
    try:
        return event(enable_timing=True), event(enable_timing=True)
    except Exception:
        return None


def _capture_checks(args):
    """``is_current_stream_capturing`` of NPU's device module and of the inputs' device's."""
    import torch

    out = []
    for module in (torch.__dict__.get("npu"), _device_module(args)):
        fn = getattr(module, "is_current_stream_capturing", None) if module is not None else None
        if callable(fn) and fn not in out:
            out.append(fn)
    return tuple(out)


def supported():
    if _SKIP[0] is not None:
        return True
    try:
        from torch._C._dynamo.eval_frame import set_code_exec_strategy  # noqa: F401
        from torch._dynamo.types import FrameAction, FrameExecStrategy

        _SKIP[0] = FrameExecStrategy(FrameAction.SKIP, FrameAction.SKIP)
        _DEFAULT[0] = FrameExecStrategy(FrameAction.DEFAULT, FrameAction.DEFAULT)
        return True
    except Exception:
        return False


def attach(ctx, eager, entry):
    """Give the site compiled by ``ctx`` (torch's OptimizeContext) a :class:`Meter`, when asked for.

    Returns the meter, or None (off, a ``fullgraph=True`` site, no hooks in this torch).
    """
    mode = MODE[0]
    if mode not in MODES:
        return None
    d = getattr(ctx, "__dict__", {})
    fn = eager.__func__ if type(eager) is MethodType else eager
    if type(fn) is not FunctionType or "__wrapped__" in fn.__dict__:
        return None  # a wrapper's code (torch.no_grad()(fn)) is shared with every function it wraps
    hooks, code = d.get("enter_exit_hooks"), fn.__code__
    if not isinstance(hooks, list) or code is None or d.get("fullgraph") or not supported():
        return None
    if any(type(h) is Meter for h in hooks):
        return None
    m = Meter(entry, code, hooks, mode == "pick")
    hooks.append(m)
    _meters.append(m)
    return m


def detach_all():
    """deactivate(): every meter off its wrapper, every code back to dynamo's default."""
    while _meters:
        _meters.pop().remove()
