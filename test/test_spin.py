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

    def spin_once(self, timeout_sec=None) -> None:
        raise AttributeError("'NoneType' object has no attribute 'trigger'")


@pytest.mark.parametrize("context_ok, is_shutdown, raised", [(True, True, False), (False, False, False),
                                                              (True, False, True)])
def test_shutdown_races_end_quietly_and_live_errors_surface(monkeypatch, context_ok, is_shutdown, raised):
    seen = []
    monkeypatch.setattr(threading, "excepthook", lambda args: seen.append(args.exc_type))
    spinner = spin_in_thread(_Executor(context_ok, is_shutdown), "test")
    spinner.thread.join(timeout=10.0)
    assert not spinner.thread.is_alive()
    assert seen == ([AttributeError] if raised else [])


class _Waiting(_Executor):
    """Counts its waits, as a live executor with nothing to do does."""

    def __init__(self) -> None:
        super().__init__(True, False)
        self.waits = 0

    def spin_once(self, timeout_sec=None) -> None:
        assert timeout_sec is not None, "an unbounded wait could outlive the executor"
        self.waits += 1
        threading.Event().wait(timeout_sec)


def test_stop_ends_and_joins_the_spin_thread():
    """stop() returns only once the thread left its wait: nothing may still wait inside rclpy when
    the caller shuts the executor down or the process exits (a daemon thread there aborts it)."""
    executor = _Waiting()
    spinner = spin_in_thread(executor, "test")
    while executor.waits < 2:
        spinner.thread.join(0.01)
    assert spinner.stop(timeout=5.0)
    assert not spinner.thread.is_alive()
