"""One `main()` pattern for every node: spin, and shut down cleanly on SIGINT *and* SIGTERM."""

from __future__ import annotations

import signal

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor


def run_node(node_cls, args=None, threads: int = 1) -> None:
    """Create `node_cls()` and spin it until Ctrl-C / SIGTERM; always destroy it cleanly.

    One executor thread by default: rclpy's multi-threaded executor costs far more CPU and GIL
    time than it saves for nodes whose callbacks are all short (ours; slow work has its own
    thread inside the node)."""
    rclpy.init(args=args)
    # SIGTERM would otherwise kill us without closing files (e.g. an open bag): turn it into
    # the same clean shutdown as Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: rclpy.try_shutdown())
    node = None
    try:
        node = node_cls()
        executor = SingleThreadedExecutor() if threads == 1 else MultiThreadedExecutor(num_threads=threads)
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            close = getattr(node, "close", None)
            if close is not None:
                close()
            node.destroy_node()
        rclpy.try_shutdown()
