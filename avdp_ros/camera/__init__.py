"""Camera drivers (pure cores; the ROS shells are in avdp_ros.nodes)."""
