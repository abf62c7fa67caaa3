"""Pure real-time control cores (no rclpy): action-chunk timing and the commander's safety filter.

``chunks`` turns policy action chunks into a time-stamped plan and decides when to infer next;
``safety`` turns plan targets into commands that respect the workspace and motion limits.
Every time is a float in seconds passed in by the caller, so nodes use their ROS clock and
tests use a fake one.
"""
