"""Training (torch, no rclpy): the loop (`engine`), metrics, plots, data set-up, where a run starts
from (`sources`) and one job per model kind (`jobs`). The console scripts are `tools/train.py`."""
