"""The colcon path, for real: build the package with `colcon build` into a scratch workspace, check
what a ROS user gets installed, and start an installed executable from the install space alone.

colcon-core and its ROS extensions come from PyPI (requirements-dev.txt), so this runs on a
machine without a system ROS 2, as CI does.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import wait_until

ROOT = Path(__file__).resolve().parents[1]
COLCON = Path(sys.executable).with_name("colcon")


def _entry_points() -> list[str]:
    """console_scripts names declared in setup.py (the executables lib/avdp_ros must hold)."""
    text = (ROOT / "setup.py").read_text()
    block = text.split('"console_scripts": [', 1)[1].split("]", 1)[0]
    return re.findall(r'"([\w-]+) = avdp_ros\.', block)


def _copy_sources(dest: Path) -> None:
    """The package as a user's clone has it: tracked and untracked-but-not-ignored files only
    (no runs/, .venv, caches)."""
    if (ROOT / ".git").exists():
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                               capture_output=True, text=True).stdout.splitlines()
    else:  # an exported tree: everything but the usual build outputs
        files = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file()
                 and not {".venv", "runs", "build", "install", "log", "__pycache__"} & set(p.parts)]
    for rel in files:
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    if not COLCON.exists():
        pytest.fail(f"{COLCON} missing: install the test tools (AVDP_DEV=1 scripts/bootstrap.sh)")
    ws = tmp_path_factory.mktemp("colcon_ws")
    _copy_sources(ws / "src" / "avdp_ros")
    result = subprocess.run([str(COLCON), "build", "--event-handlers", "console_direct-"], cwd=ws,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"colcon build failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return ws


def test_colcon_installs_share_and_every_executable(workspace):
    prefix = workspace / "install" / "avdp_ros"
    share = prefix / "share" / "avdp_ros"
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / "avdp_ros").is_file()
    for rel in ("package.xml", "launch/policy.launch.py", "launch/record.launch.py", "config/policy.yaml",
                "config/record.yaml", "config/fastdds.xml", "models/avdp_default/checkpoint.json",
                "models/avdp_default/model.safetensors"):
        assert (share / rel).is_file(), f"share/avdp_ros/{rel} not installed"
    controllers = sorted(p.name for p in (ROOT / "config" / "controllers").glob("*.yaml"))
    assert sorted(p.name for p in (share / "config" / "controllers").glob("*.yaml")) == controllers
    names = _entry_points()
    assert {"policy", "realsense_camera", "avdp-run", "avdp-eval"} <= set(names)
    for name in names:
        exe = prefix / "lib" / "avdp_ros" / name
        assert exe.is_file() and os.access(exe, os.X_OK), f"lib/avdp_ros/{name} not installed as an executable"
    # setup.cfg tells setuptools to put scripts there (what `ros2 run avdp_ros <name>` looks in)
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["install"]["install_scripts"].endswith("lib/avdp_ros")


def test_installed_runner_reads_the_installed_share(workspace, tmp_path):
    """avdp-run from lib/avdp_ros, with only `source install/setup.bash`: it must import the installed
    package, read config/policy.yaml from share/ (edited here, so the log proves which file it read)
    and load the default model from share/, then stop cleanly on SIGINT."""
    prefix = workspace / "install" / "avdp_ros"
    config = prefix / "share" / "avdp_ros" / "config" / "policy.yaml"
    text = config.read_text()
    assert "command_rate_hz: 200.0" in text
    config.write_text(text.replace("command_rate_hz: 200.0", "command_rate_hz: 150.0"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AMENT_PREFIX_PATH")}
    script = (f"source {workspace}/install/setup.bash && exec {prefix}/lib/avdp_ros/avdp-run policy --robot real "
              "--set avdp_policy.torch_threads=1 --set avdp_policy.diagnostics_rate_hz=0")
    proc = subprocess.Popen(["bash", "-c", script], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()

    def active() -> bool:
        if proc.poll() is not None and not reader.is_alive():
            pytest.fail("avdp-run exited early:\n" + "".join(lines[-30:]))
        # "started" comes after avdp-run installed its SIGINT handler ("active:" comes before it)
        return any("avdp-run: started" in line for line in lines)

    try:
        wait_until(active, 120.0, what="the installed policy node to activate")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)
    log = "".join(lines)
    assert f"from {prefix}/share/avdp_ros/models/avdp_default" in log, log[-2000:]
    assert "commands at 150 Hz" in log, log[-2000:]
    assert proc.returncode == 0, log[-2000:]


# import name -> where a colcon user gets it: ("package.xml", rosdep key) or ("pip", requirement name)
DEPENDENCIES = {
    **{name: ("package.xml", name) for name in (
        "rclpy", "rcl_interfaces", "builtin_interfaces", "ament_index_python", "std_msgs", "std_srvs",
        "sensor_msgs", "geometry_msgs", "nav_msgs", "diagnostic_msgs", "rosgraph_msgs", "launch", "launch_ros")},
    "numpy": ("package.xml", "python3-numpy"), "yaml": ("package.xml", "python3-yaml"),
    "cv2": ("package.xml", "python3-opencv"), "tqdm": ("package.xml", "python3-tqdm"),
    "matplotlib": ("package.xml", "python3-matplotlib"), "imageio": ("package.xml", "python3-imageio"),
    **{name: ("pip", name) for name in ("mujoco", "rosbags", "mcap", "diffusers", "safetensors", "onnx",
                                         "onnxruntime", "pyrealsense2")},
    "ruamel": ("pip", "rosbags"),  # ruamel.yaml comes with rosbags
}
OUTSIDE = {"torch": "installed first, pinned (README Install)", "tensorrt": "JetPack / NVIDIA, optional backend"}


def test_package_xml_and_requirements_cover_every_import():
    """A colcon user gets every import from rosdep (package.xml) or requirements-runtime.txt."""
    import ast

    imported = set()
    for path in [*(ROOT / "avdp_ros").rglob("*.py"), *(ROOT / "launch").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"avdp_ros", "__future__"}
    unknown = third_party - set(DEPENDENCIES) - set(OUTSIDE)
    assert not unknown, f"imports {sorted(unknown)}: add them to package.xml or requirements-runtime.txt and here"
    package_xml = (ROOT / "package.xml").read_text()
    runtime = {re.split(r"[<>=\[ ]", line.strip())[0] for line in (ROOT / "requirements-runtime.txt").read_text()
               .splitlines() if line.strip() and not line.startswith("#")}
    for name in sorted(third_party - set(OUTSIDE)):
        where, key = DEPENDENCIES[name]
        if where == "package.xml":
            assert f"<exec_depend>{key}</exec_depend>" in package_xml, f"import {name}: package.xml lacks {key}"
        else:
            assert key in runtime, f"import {name}: requirements-runtime.txt lacks {key}"
    requirements = (ROOT / "requirements.txt").read_text()
    assert "-r requirements-runtime.txt" in requirements  # pip-only installs get the same list
