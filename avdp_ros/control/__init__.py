"""Pure real-time control cores (no rclpy): the policy node's loop without ROS.

``chunks`` turns policy action chunks into a time-stamped plan and decides when to infer next;
``safety`` turns plan targets into commands that respect the workspace and motion limits;
``policy_runner`` joins them with observation assembly and the inference thread; ``params``
declares and validates the policy node's parameters. Every time is a float in seconds passed in
by the caller, so nodes use their ROS clock and tests use a fake one.
"""
