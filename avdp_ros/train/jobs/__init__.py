"""One training job per model kind; `JOBS` maps each kind of `model.kinds.KINDS` to its job."""

from __future__ import annotations

from avdp_ros.train.jobs.action import BaselineJob, IDMJob
from avdp_ros.train.jobs.base import Job
from avdp_ros.train.jobs.tokenizer import TokenizerJob
from avdp_ros.train.jobs.video import VideoJob

JOBS: dict[str, type[Job]] = {job.kind: job for job in (TokenizerJob, VideoJob, IDMJob, BaselineJob)}

__all__ = ["JOBS", "BaselineJob", "IDMJob", "Job", "TokenizerJob", "VideoJob"]
