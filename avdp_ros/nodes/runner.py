"""In-process runner: starts the same nodes as the launch files, from the same YAML, for
installs without `ros2 launch` (pip-only ROS 2 wheels).

    avdp-run record --robot sim --operator expert [--config config/record.yaml]
                    [--set avdp_sim_bridge.task=pick_place ...] [--use-sim-time] [--processes]
    avdp-run policy --robot sim [--model DIR] [--backend torch] [--config config/policy.yaml]
                    [--cameras realsense] [--controller NAME] [--set avdp_policy.execute_steps=4 ...]
                    [--use-sim-time] [--processes]

`--controller NAME` applies config/controllers/NAME.yaml (avdp_ros.controllers): the robot topics
remapped to that controller's for every node of the job, and its base_frame.

By default all nodes share one process and one single-threaded executor (cheapest on small
machines); `--processes` starts one process per node exactly like `ros2 launch` does, which
keeps heavy nodes (the recorder at high bandwidth) off each other's GIL. SIGINT and SIGTERM both
shut everything down cleanly (bags closed); child processes get SIGINT, not SIGTERM (ros2/launch#666).
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import yaml

from avdp_ros.controllers import load_controller
from avdp_ros.stack import NODES, policy_roles, record_roles


def config_file(filename: str) -> Path:
    """config/<filename> from the source tree, else from the installed share/ directory."""
    here = Path(__file__).resolve().parents[2] / "config" / filename
    if here.exists():
        return here
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("avdp_ros")) / "config" / filename
    except Exception as exc:  # noqa: BLE001 - turned into a clear message
        raise FileNotFoundError(f"config '{filename}' not found in the source tree or the installed "
                                f"package share directory ({exc})") from exc


def default_config(name: str) -> Path:
    """The parameter YAML of a job: config/<name>.yaml."""
    return config_file(f"{name}.yaml")


def use_dds_profile() -> None:
    """Point Fast DDS at config/fastdds.xml unless the user chose a profile.

    Must run before rclpy.init() in this process; child processes inherit it. Without it, Fast
    DDS's 512 KiB shared-memory segment is smaller than one 640x480 image and about half the
    frames are lost between processes (bench/recorder_stress.py).
    """
    os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(config_file("fastdds.xml")))


def parse_sets(sets: list[str]) -> dict[str, dict[str, object]]:
    """["node.param=value", ...] -> {node: {param: value}}; values parsed as YAML (1.0, true, [a, b])."""
    out: dict[str, dict[str, object]] = {}
    for s in sets:
        key, sep, value = s.partition("=")
        node, dot, param = key.partition(".")
        if not sep or not dot or not node or not param:
            raise ValueError(f"--set '{s}': expected NODE.PARAM=VALUE, e.g. avdp_sim_bridge.task=pick_place")
        out.setdefault(node, {})[param] = yaml.safe_load(value)
    return out


def ros_args(config: Path, params: dict[str, object] | None = None, use_sim_time: bool = False,
             remaps: dict[str, str] | None = None) -> list[str]:
    """The `--ros-args` a node gets: the YAML first, then overrides (later wins, as in launch)."""
    args = ["--ros-args", "--params-file", str(config)]
    for name, value in (params or {}).items():
        args += ["-p", f"{name}:={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"]
    if use_sim_time:
        args += ["-p", "use_sim_time:=true"]
    for src, dst in (remaps or {}).items():
        args += ["-r", f"{src}:={dst}"]
    return args


class Stack:
    """A set of nodes in this process on one executor thread.

    Args:
        roles: keys of `avdp_ros.stack.NODES`.
        config: parameter YAML (ROS `ros__parameters` format).
        overrides: {node name: {param: value}} applied after the YAML.
        remaps: {topic: new topic} for every node (a controller config's).
        context: rclpy context (tests pass their own); None = the default one, initialised here.
    """

    def __init__(self, roles: list[str], config: Path, overrides: dict | None = None,
                 use_sim_time: bool = False, context=None, threads: int = 1, remaps: dict | None = None):
        use_dds_profile()
        import rclpy
        from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor

        self._rclpy = rclpy
        self._own_context = context is None
        if self._own_context and not rclpy.ok():
            rclpy.init()
        self.context = context
        overrides = overrides or {}
        unknown = set(overrides) - {NODES[r].name for r in roles}
        if unknown:
            raise ValueError(f"--set for node(s) {sorted(unknown)} not in this job: "
                             f"expected one of {[NODES[r].name for r in roles]}")
        self.nodes = {}
        self._spinner = None
        # Single-threaded by default: every callback is short, and rclpy's multi-threaded
        # executor burns CPU and GIL time that the sim loop needs on small machines.
        self.executor = (SingleThreadedExecutor(context=context) if threads == 1
                         else MultiThreadedExecutor(num_threads=threads, context=context))
        try:
            for role in roles:
                spec = NODES[role]
                module, cls = spec.cls.split(":")
                node_cls = getattr(importlib.import_module(module), cls)
                args = ros_args(config, overrides.get(spec.name), use_sim_time, remaps)
                node = node_cls(cli_args=args, context=context)
                self.nodes[role] = node
                self.executor.add_node(node)
        except Exception:
            self.shutdown()
            raise
        from avdp_ros.nodes.spin import spin_in_thread

        self._spinner = spin_in_thread(self.executor)

    def shutdown(self) -> None:
        """Close every node (bags get finalised) while the executor still spins, then end the spin
        thread, then stop the executor: no thread may still wait inside rclpy when the process exits."""
        for node in reversed(list(self.nodes.values())):
            close = getattr(node, "close", None)
            if close is not None:
                close()
        if self._spinner is not None:
            self._spinner.stop()
        self.executor.shutdown(timeout_sec=2.0)
        for node in self.nodes.values():
            node.destroy_node()
        self.nodes.clear()
        if self._own_context:
            self._rclpy.try_shutdown()


class ProcessStack:
    """The same nodes, one process each, like `ros2 launch` (no shared GIL between nodes)."""

    def __init__(self, roles: list[str], config: Path, overrides: dict | None = None,
                 use_sim_time: bool = False, remaps: dict | None = None):
        overrides = overrides or {}
        use_dds_profile()
        self.procs: dict[str, subprocess.Popen] = {}
        for role in roles:
            spec = NODES[role]
            module = spec.cls.split(":")[0]
            cmd = [sys.executable, "-m", module, *ros_args(config, overrides.get(spec.name), use_sim_time, remaps)]
            self.procs[role] = subprocess.Popen(cmd)

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs.values())

    def shutdown(self, timeout: float = 10.0) -> int:
        """SIGINT to every node (clean shutdown, bags closed), SIGKILL after `timeout`."""
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        codes = []
        for p in self.procs.values():
            try:
                codes.append(p.wait(timeout=timeout))
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append(p.wait())
        return max((abs(c) for c in codes), default=0)


def run_processes(roles: list[str], config: Path, overrides: dict, use_sim_time: bool,
                  remaps: dict | None = None) -> int:
    """Run a ProcessStack until Ctrl-C/SIGTERM (or a node dies); forward both as SIGINT."""
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stack = ProcessStack(roles, config, overrides, use_sim_time, remaps)
    while not stop.is_set() and stack.alive():
        stop.wait(0.2)
    return stack.shutdown()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="avdp-run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("job", choices=["record", "policy"], help="which set of nodes to start")
    ap.add_argument("--robot", default="sim", help="sim (MuJoCo bridge, default) or real")
    ap.add_argument("--operator", default=None, help="record: expert (default) | teleop | none")
    ap.add_argument("--model", default=None, help="policy: checkpoint directory (= --set avdp_policy.model=DIR)")
    ap.add_argument("--backend", default=None, help="policy: inference backend (= --set avdp_policy.backend=...)")
    ap.add_argument("--config", type=Path, default=None, help="parameter YAML (default config/<job>.yaml)")
    ap.add_argument("--cameras", default=None, help="policy: none (default) | realsense (starts realsense_camera, "
                    "robot real)")
    ap.add_argument("--controller", default=None, metavar="NAME",
                    help="policy: controller config config/controllers/NAME.yaml (its topics and base_frame)")
    ap.add_argument("--set", action="append", default=[], metavar="NODE.PARAM=VALUE",
                    help="override a parameter, e.g. avdp_sim_bridge.task=pick_place")
    ap.add_argument("--use-sim-time", action="store_true", help="stamp with sim time published on /clock")
    ap.add_argument("--processes", action="store_true", help="one process per node (like ros2 launch)")
    a = ap.parse_args(argv)
    try:
        if a.job == "record":
            if any(v is not None for v in (a.model, a.backend, a.controller, a.cameras)):
                raise ValueError("--model / --backend / --controller / --cameras belong to the policy job")
            roles = record_roles(a.robot, a.operator or "expert")
        else:
            if a.operator is not None:
                raise ValueError("--operator belongs to the record job: the policy job's operator is the policy")
            roles = policy_roles(a.robot, a.cameras or "none")
        config = a.config or default_config(a.job)
        if not config.exists():
            raise FileNotFoundError(f"config file {config} does not exist")
        # later wins: the YAML, then the controller's base_frame, then --set / --model / --backend
        controller = load_controller(a.controller, config_file("controllers")) if a.controller else None
        overrides = controller.overrides(NODES[r].name for r in roles) if controller else {}
        for node, params in parse_sets(a.set).items():
            overrides.setdefault(node, {}).update(params)
        for param, value in (("model", a.model), ("backend", a.backend)):
            if value is not None:
                overrides.setdefault(NODES["policy"].name, {})[param] = value
    except (ValueError, FileNotFoundError) as exc:
        ap.error(str(exc))
    remaps = controller.remappings if controller else {}
    if controller and controller.warning:
        print(f"avdp-run: WARNING, controller {controller.name}: {controller.warning}", file=sys.stderr, flush=True)
    os.environ.setdefault("MUJOCO_GL", "egl")
    if a.processes:
        return run_processes(roles, config, overrides, a.use_sim_time, remaps)

    try:
        stack = Stack(roles, config, overrides, use_sim_time=a.use_sim_time, remaps=remaps)
    except ValueError as exc:  # a node refused its parameters (or its model): say why, no traceback
        print(f"avdp-run: {exc}", file=sys.stderr, flush=True)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"avdp-run: started {', '.join(NODES[r].name for r in roles)}; Ctrl-C to stop", flush=True)
    while not stop.is_set():
        stop.wait(0.5)
    stack.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
