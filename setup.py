"""ament_python package: builds with `colcon build` in a ROS 2 workspace and with `pip install -e .`."""

import os
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "avdp_ros"


def tree(src: str, dest: str) -> list[tuple[str, list[str]]]:
    """data_files entries for every file under src, keeping sub-directories (a checkpoint
    directory such as models/avdp_default/ cannot be listed as one data file)."""
    out: dict[str, list[str]] = {}
    for path in sorted(glob(os.path.join(src, "**", "*"), recursive=True)):
        if os.path.isfile(path):
            out.setdefault(os.path.normpath(os.path.join(dest, os.path.relpath(os.path.dirname(path), src))),
                           []).append(path)
    return list(out.items())


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
        (f"share/{PACKAGE}/config/controllers", glob("config/controllers/*.yaml")),
        *tree("models", f"share/{PACKAGE}/models"),
    ],
    # ROS packages (rclpy, *_msgs) come from the ROS install or the PyPI wheels in
    # requirements.txt; listing them here would break colcon builds against a system ROS.
    install_requires=["setuptools", "numpy", "pyyaml"],
    zip_safe=True,
    maintainer="avdp_ros maintainers",
    maintainer_email="avdp@example.com",
    description="Autoregressive video diffusion policies for robot arms on ROS 2",
    license="Apache-2.0",
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            # nodes (ROS executables: `ros2 run avdp_ros <name>`)
            "sim_bridge = avdp_ros.nodes.sim_bridge_node:main",
            "expert = avdp_ros.nodes.expert_node:main",
            "teleop = avdp_ros.nodes.teleop_node:main",
            "recorder = avdp_ros.nodes.recorder_node:main",
            "policy = avdp_ros.nodes.policy_node:main",
            "realsense_camera = avdp_ros.nodes.realsense_camera_node:main",
            # tools
            "avdp-run = avdp_ros.nodes.runner:main",
            "avdp-collect = avdp_ros.tools.collect:main",
            "avdp-convert = avdp_ros.tools.convert:main",
            "avdp-sim-bench = avdp_ros.tools.sim_bench:main",
            "avdp-eval = avdp_ros.tools.eval:main",
            "avdp-eval-ros = avdp_ros.tools.eval_ros:main",
            "avdp-dagger = avdp_ros.tools.dagger:main",
            "avdp-train-tokenizer = avdp_ros.tools.train:main_tokenizer",
            "avdp-train-video = avdp_ros.tools.train:main_video",
            "avdp-train-idm = avdp_ros.tools.train:main_idm",
            "avdp-train-baseline = avdp_ros.tools.train:main_baseline",
            "avdp-attach-tokenizer = avdp_ros.tools.attach_tokenizer:main",
            "avdp-attach-video = avdp_ros.tools.attach_video:main",
            "avdp-blend-policy = avdp_ros.tools.blend_policy:main",
            "avdp-pseudo-label = avdp_ros.tools.pseudo_label:main",
            "avdp-export = avdp_ros.tools.export:main",
            "avdp-build-engine = avdp_ros.tools.build_engine:main",
        ],
    },
)
