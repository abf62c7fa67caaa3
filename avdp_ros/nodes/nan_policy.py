"""The policy node with avdp-eval-ros's nan_actions fault: its loaded policy wrapped in
`evaluation.faults.NanActions`. In-process the evaluator calls `make_nan_policy_node`; with one
process per node it starts

    python -m avdp_ros.nodes.nan_policy START_S DURATION_S --ros-args ...
"""

from __future__ import annotations

import sys

from rclpy.lifecycle import TransitionCallbackReturn

from avdp_ros.evaluation.faults import FaultSpec, NanActions


def make_nan_policy_node(fault: FaultSpec, **node_kwargs):
    """The policy node, configured, its policy wrapped, activated (`autostart` must be false, so
    that the wrapper is in place before the first inference)."""
    from avdp_ros.nodes.policy_node import PolicyNode

    node = PolicyNode(**node_kwargs)
    if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
        error = node.configure_error or "configure failed"
        node.destroy_node()
        raise ValueError(f"avdp_policy: {error}")
    node.policy = NanActions(node.policy, fault.start_s, fault.duration_s)
    node.trigger_activate()
    return node


def main(argv: list[str] | None = None) -> int:
    from avdp_ros.nodes.spin import run_node

    argv = sys.argv[1:] if argv is None else argv
    fault = FaultSpec("nan_actions", float(argv[0]), float(argv[1]))
    run_node(lambda: make_nan_policy_node(fault), [sys.argv[0], *argv[2:]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
