"""``s_tir.Schedule`` with its primitives as defined, not wrapped in TVM's run-time type check.

Why: TVM 0.27 wraps every schedule primitive in ``type_checked``, which binds the call's signature and
re-derives every argument's annotation on every call, with no cache: 0.3-0.4 s of the ~6000 primitive
calls that schedule MobileNetV2 or EfficientNet-Lite0 (about a third of the scheduling). The schedule
rule (schedule.py) makes its schedules from this class; the scheduled modules are the same, byte for
byte. A wrong argument type still fails, in the FFI, and a kernel whose rule fails keeps TVM's default
loops with a warning (``IntegerKernelCPU.apply``).
"""

from __future__ import annotations

from tvm import s_tir


def _copy(sch: s_tir.Schedule) -> s_tir.Schedule:
    """A copy (the rule's trials) that stays unchecked: ``Schedule.copy`` comes back from the FFI as the
    base class."""
    from tvm.s_tir.schedule import _ffi_api

    c = UncheckedSchedule.__new__(UncheckedSchedule)
    c.__init_handle_by_constructor__(_ffi_api.ScheduleCopy, sch)
    return c


UncheckedSchedule = type("UncheckedSchedule", (s_tir.Schedule,), {
    "__slots__": (), "__module__": __name__, "__doc__": __doc__, "copy": _copy,
    **{name: f.__wrapped__ for name, f in vars(s_tir.Schedule).items() if callable(f) and hasattr(f, "__wrapped__")}})
