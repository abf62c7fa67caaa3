"""Package structure: node sets, runner argument handling, launch files, and the rule that
rclpy stays in the node shells."""

import ast
from pathlib import Path

import pytest
import yaml

from avdp_ros.nodes.runner import default_config, parse_sets, ros_args
from avdp_ros.nodes.runner import main as runner_main
from avdp_ros.stack import NODES, policy_roles, record_roles

ROOT = Path(__file__).resolve().parent.parent


def test_record_roles():
    assert record_roles("sim", "expert") == ["sim_bridge", "expert", "recorder"]
    assert record_roles("real", "teleop") == ["teleop", "recorder"]
    assert record_roles("sim", "none") == ["sim_bridge", "recorder"]
    with pytest.raises(ValueError, match="needs robot 'sim'"):
        record_roles("real", "expert")
    with pytest.raises(ValueError, match="expected one of"):
        record_roles("gazebo", "teleop")


def test_policy_roles():
    assert policy_roles("sim") == ["sim_bridge", "policy"]
    assert policy_roles("real") == ["policy"]
    with pytest.raises(ValueError, match="expected one of"):
        policy_roles("gazebo")
    assert policy_roles("real", "realsense") == ["realsense", "policy"]
    with pytest.raises(ValueError, match="cameras 'realsense' needs robot 'real'"):
        policy_roles("sim", "realsense")
    with pytest.raises(ValueError, match="cameras 'usb': expected one of"):
        policy_roles("real", "usb")


@pytest.mark.parametrize("argv", [["policy", "--operator", "teleop"], ["record", "--model", "m"],
                                  ["policy", "--robot", "gazebo"], ["record", "--cameras", "realsense"],
                                  ["policy", "--cameras", "realsense"]])
def test_runner_refuses_arguments_of_the_other_job(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        runner_main(argv)
    assert exc.value.code == 2
    assert "avdp-run: error:" in capsys.readouterr().err


def test_parse_sets_and_ros_args():
    sets = parse_sets(["avdp_sim_bridge.task=pick_place", "avdp_sim_bridge.seed=3",
                       "avdp_recorder.topics=[/a, /b]"])
    assert sets == {"avdp_sim_bridge": {"task": "pick_place", "seed": 3}, "avdp_recorder": {"topics": ["/a", "/b"]}}
    args = ros_args(Path("c.yaml"), sets["avdp_sim_bridge"], use_sim_time=True)
    assert args == ["--ros-args", "--params-file", "c.yaml", "-p", "task:=pick_place", "-p", "seed:=3",
                    "-p", "use_sim_time:=true"]
    with pytest.raises(ValueError, match="NODE.PARAM=VALUE"):
        parse_sets(["task=push"])


def test_config_files_name_only_known_nodes():
    known = {spec.name for spec in NODES.values()}
    for path in (ROOT / "config").glob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        for node, body in data.items():
            assert node in known or node == "/**", f"{path.name}: unknown node '{node}'"
            assert "ros__parameters" in body, f"{path.name}: '{node}' lacks ros__parameters"


def test_launch_files_are_valid_python_with_generate_launch_description():
    files = list((ROOT / "launch").glob("*.launch.py"))
    assert {"record.launch.py", "policy.launch.py"} <= {f.name for f in files}
    for f in files:
        tree = ast.parse(f.read_text())
        names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert "generate_launch_description" in names, f.name


@pytest.mark.parametrize("launch_file, roles", [("record.launch.py", "record_roles"),
                                                ("policy.launch.py", "policy_roles")])
def test_launch_files_take_their_nodes_from_the_stack_table(launch_file, roles):
    tree = ast.parse((ROOT / "launch" / launch_file).read_text())
    imported = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert {("avdp_ros.stack", "NODES"), ("avdp_ros.stack", roles)} <= imported
    args = {n.args[0].value for n in ast.walk(tree) if isinstance(n, ast.Call)
            and getattr(n.func, "id", "") == "DeclareLaunchArgument"}
    assert {"robot", "config", "use_sim_time"} <= args
    if launch_file == "policy.launch.py":
        assert {"model", "backend"} <= args


def test_console_scripts_point_at_existing_mains():
    import importlib
    import re

    text = (ROOT / "setup.py").read_text()
    for module, func in re.findall(r"= (avdp_ros[\w.]*):(\w+)", text):
        assert callable(getattr(importlib.import_module(module), func)), f"{module}:{func}"


def test_rclpy_only_in_node_shells():
    """Model, data, sim, evaluation and runtime code never import rclpy: only the node shells do,
    so everything else is testable and reusable without ROS."""
    # the node shells, the episode driver and evaluator node the tools use, and the runner
    # (avdp-run) that spins them
    allowed = {"nodes"}
    offenders = []
    for f in (ROOT / "avdp_ros").rglob("*.py"):
        rel = f.relative_to(ROOT / "avdp_ros")
        if rel.parts[0] in allowed:
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                mods = [node.module]
            mods = [m for m in mods
                    if m.split(".")[0] in ("rclpy", "launch", "launch_ros") or m.endswith("_msgs.msg")]
            if mods:
                offenders.append(f"{rel}: {mods}")
    assert not offenders, offenders


def test_runner_with_realsense_cameras_and_none_connected_says_so(capsys):
    pytest.importorskip("pyrealsense2", reason="pyrealsense2 not installed")
    import pyrealsense2 as rs

    if len(rs.context().query_devices()):
        pytest.skip("a RealSense is connected: this test is about a machine without one")
    assert runner_main(["policy", "--robot", "real", "--cameras", "realsense"]) == 2
    err = capsys.readouterr().err
    assert "avdp-run: avdp_realsense_camera: RealSense (the only one connected): no RealSense connected" in err


def test_config_documents_the_camera_parameters():
    from avdp_ros.nodes.realsense_camera_node import PARAMETERS

    params = yaml.safe_load(default_config("policy").read_text())["avdp_realsense_camera"]["ros__parameters"]
    assert params == {name: default for name, (default, _) in PARAMETERS.items()}
