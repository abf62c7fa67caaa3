"""spin_in_thread: a shutdown racing the executor thread is a normal end; a live executor's
error is not swallowed."""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("rclpy")

from avdp_ros.nodes.spin import spin_in_thread  # noqa: E402


class _Context:
    def __init__(self, ok: bool) -> None:
        self._ok = ok

    def ok(self) -> bool:
        return self._ok


class _Executor:
    """Raises from spin() what rclpy raises when a shutdown lands between two waits."""

    def __init__(self, context_ok: bool, is_shutdown: bool) -> None:
        self.context, self._is_shutdown = _Context(context_ok), is_shutdown

    def spin(self) -> None:
        raise AttributeError("'NoneType' object has no attribute 'trigger'")


@pytest.mark.parametrize("context_ok, is_shutdown, raised", [(True, True, False), (False, False, False),
                                                              (True, False, True)])
def test_shutdown_races_end_quietly_and_live_errors_surface(monkeypatch, context_ok, is_shutdown, raised):
    seen = []
    monkeypatch.setattr(threading, "excepthook", lambda args: seen.append(args.exc_type))
    thread = spin_in_thread(_Executor(context_ok, is_shutdown), "test")
    thread.join(timeout=10.0)
    assert not thread.is_alive()
    assert seen == ([AttributeError] if raised else [])
