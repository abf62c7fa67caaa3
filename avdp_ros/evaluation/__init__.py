"""Closed-loop evaluation, pure (no rclpy): `sim_eval` runs a policy in the MuJoCo tasks directly
(avdp-eval, avdp-dagger); `faults`, `ros_config`, `ros_metrics` and `report` are what avdp-eval-ros
injects, measures and writes around the episodes its evaluator node records through ROS."""
