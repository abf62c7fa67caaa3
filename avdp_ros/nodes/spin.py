"""One `main()` pattern for every node: spin, and shut down cleanly on SIGINT *and* SIGTERM."""

from __future__ import annotations

import signal
import sys
import threading

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions


def run_node(node_cls, args=None, threads: int = 1) -> None:
    """Create `node_cls()` and spin it until Ctrl-C / SIGTERM; always close it cleanly.

    rclpy's own signal handler would shut the context down first, so the node's `close()`
    could no longer log or publish; instead both signals only set a flag, and the node is
    closed (threads joined, files closed) while the context is still alive.
    A ValueError while constructing the node is a configuration error it has explained: printed
    without a traceback, exit status 1.
    One executor thread by default: rclpy's multi-threaded executor costs far more CPU and GIL
    time than it saves for nodes whose callbacks are all short (ours; slow work has its own
    thread inside the node). With one thread, callback groups change nothing: every callback
    of every node waits for the one before it.
    """
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    node = None
    executor = SingleThreadedExecutor() if threads == 1 else MultiThreadedExecutor(num_threads=threads)
    try:
        try:
            node = node_cls()
        except ValueError as exc:  # a configuration error the node explained: the message, no traceback
            print(f"[ERROR] {exc}", file=sys.stderr)
            raise SystemExit(1) from None
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        # Ctrl-C before our handler took over, or the context was shut down elsewhere:
        # both are a normal stop, and the finally block closes the node.
        stop.set()
    finally:
        if node is not None:
            close = getattr(node, "close", None)
            if close is not None:
                close()
            node.destroy_node()
        executor.shutdown()
        rclpy.try_shutdown()


class Spinner:
    """Spins an executor on a daemon thread until `stop()` (or until its context is shut down).

    It waits at most 0.1 s at a time rather than calling `executor.spin()`: a wait with no timeout
    that starts just as the executor shuts down (its guard condition already released) never
    returns, and a daemon thread still inside rclpy's C++ wait when the interpreter exits aborts
    the process ("terminate called without an active exception"). `stop()` joins the thread, so
    the caller shuts the executor and context down only once nothing is waiting on them.
    """

    def __init__(self, executor, name: str = "executor") -> None:
        self.executor = executor
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._spin, name=name, daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        executor = self.executor
        try:
            while not self._stop.is_set() and executor.context.ok():
                executor.spin_once(timeout_sec=0.1)
        except ExternalShutdownException:
            return  # the context was shut down: a normal end
        except Exception:
            # shut down between two waits, rclpy raises RCLError ("context is not valid") from
            # building the next wait set, or AttributeError from a guard condition the executor's
            # shutdown already released: the same normal end, unless context and executor are alive
            if executor.context.ok() and not getattr(executor, "_is_shutdown", False):
                raise

    def stop(self, timeout: float = 2.0) -> bool:
        """End the loop and join the thread; False if it is still inside a callback after `timeout` s."""
        self._stop.set()
        if self.thread is not threading.current_thread():
            self.thread.join(timeout)
        return not self.thread.is_alive()


def spin_in_thread(executor, name: str = "executor") -> Spinner:
    """Spin `executor` on a daemon thread; call `.stop()` before shutting the executor down."""
    return Spinner(executor, name)
