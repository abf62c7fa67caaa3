"""What one avdp-eval-ros run is: the CLI's flags and their defaults, validated."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from avdp_ros.evaluation.faults import FaultSpec


@dataclass
class EvalRosConfig:
    policy: str = "models/avdp_default"
    task: str = "push"
    appearance: str = "nominal"  # scene look per episode (sim/appearance.py distribution)
    episodes: int = 10
    seed: int = 100_000  # episode i uses seed + i, as avdp-eval
    time_limit: float = 15.0  # s of bridge clock per episode, as avdp-eval's sim seconds
    settle: float = 0.5  # s success must hold (avdp-collect's default)
    videos: int = 1  # episodes recorded into rollout.mp4
    threads: int | None = None  # avdp_policy.torch_threads (None: the config's)
    use_sim_time: bool = False  # all nodes on the bridge's /clock: a loaded CPU slows the sim, not the loop
    real_time_factor: float = 1.0  # != 1 needs use_sim_time
    in_process: bool = False
    config: Path | None = None  # parameter YAML (default config/policy.yaml)
    overrides: dict = field(default_factory=dict)  # {node: {param: value}} from --set
    fault: FaultSpec = field(default_factory=FaultSpec)
    out: Path | None = None
    startup_timeout: float = 300.0  # s until the policy commands (model load in a fresh process)
    plot_episodes: int = 3

    def __post_init__(self) -> None:
        from avdp_ros.sim.appearance import distribution

        distribution(self.appearance)  # an unknown name is refused here, naming the known ones
        if self.episodes < 1:
            raise ValueError(f"episodes {self.episodes}: expected >= 1")
        if not (self.time_limit > 0 and self.settle >= 0):
            raise ValueError(f"time limit {self.time_limit} / settle {self.settle}: expected > 0 / >= 0 s")
        if not self.real_time_factor > 0:
            raise ValueError(f"real time factor {self.real_time_factor}: expected > 0 "
                             "(sim paced against the wall)")
        if self.real_time_factor != 1.0 and not self.use_sim_time:
            raise ValueError(f"real time factor {self.real_time_factor} needs use_sim_time "
                             "(stamps from /clock)")
        if self.fault.kind != "none" and self.fault.start_s + self.fault.duration_s >= self.time_limit:
            raise ValueError(f"fault window {self.fault.start_s} + {self.fault.duration_s} s does not end "
                             f"before the time limit {self.time_limit} s: recovery could not be seen")

