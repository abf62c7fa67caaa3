"""``avdp-convert IN_DIR OUT_DIR``: a directory of episode bags -> a training dataset.

See ``avdp_ros.data.convert`` (and docs/dataset_format.md) for alignment rules and the format.
"""

from __future__ import annotations

import argparse
import logging
import sys

from avdp_ros.data.convert import ConvertConfig, convert_directory


def build_parser() -> argparse.ArgumentParser:
    d = ConvertConfig()
    p = argparse.ArgumentParser(prog="avdp-convert", description=__doc__.splitlines()[0])
    p.add_argument("in_dir", help="directory holding bag directories (searched recursively)")
    p.add_argument("out_dir", help="dataset directory to write (manifest.json + episodes/)")
    p.add_argument("--obs-hz", type=float, default=d.obs_hz, help="observation rate (default %(default)s)")
    p.add_argument(
        "--action-hz",
        type=float,
        default=d.action_hz,
        help="action rate, an integer multiple of --obs-hz (default %(default)s)",
    )
    p.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=list(d.image_size),
        help="output image height width (default %(default)s)",
    )
    p.add_argument(
        "--image-tolerance",
        type=float,
        default=d.image_tolerance_s,
        help="seconds between a grid step and its camera frame beyond which the step counts as a "
        "gap (default %(default)s)",
    )
    p.add_argument(
        "--max-gap",
        type=float,
        default=d.max_gap_s,
        help="a step whose nearest frame is further away fails the bag (default %(default)s)",
    )
    p.add_argument(
        "--on-gap",
        choices=("error", "nearest"),
        default=d.on_gap,
        help="a step without a frame within --max-gap fails the bag (error), or keeps the nearest",
    )
    p.add_argument("--camera-topic", default=d.cameras["camera"])
    p.add_argument("--wrist-topic", default=d.cameras["wrist"])
    p.add_argument("--pose-topic", default=d.pose_topic)
    p.add_argument("--target-topic", default=d.target_topic)
    p.add_argument("--gripper-state-topic", default=d.gripper_state_topic)
    p.add_argument("--gripper-cmd-topic", default=d.gripper_cmd_topic)
    p.add_argument("--label-topic", default=d.label_topic,
                   help="pose labels preferred over --target-topic when a bag has them (expert's intended target)")
    p.add_argument("--gripper-label-topic", default=d.gripper_label_topic,
                   help="gripper labels used together with --label-topic")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in OUT_DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        cfg = ConvertConfig(
            obs_hz=args.obs_hz,
            action_hz=args.action_hz,
            image_size=tuple(args.image_size),
            image_tolerance_s=args.image_tolerance,
            max_gap_s=args.max_gap,
            on_gap=args.on_gap,
            cameras={"camera": args.camera_topic, "wrist": args.wrist_topic},
            pose_topic=args.pose_topic,
            target_topic=args.target_topic,
            gripper_state_topic=args.gripper_state_topic,
            gripper_cmd_topic=args.gripper_cmd_topic,
            label_topic=args.label_topic,
            gripper_label_topic=args.gripper_label_topic,
        )
        report = convert_directory(
            args.in_dir, args.out_dir, cfg, overwrite=args.overwrite, progress=not args.no_progress
        )
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        print(f"avdp-convert: {err}", file=sys.stderr)
        return 2
    print(
        f"converted {len(report.episodes)} episodes ({report.frames} frames) in {report.seconds:.2f} s: "
        f"{report.episodes_per_s:.2f} episodes/s, {report.frames_per_s:.1f} frames/s; "
        f"{len(report.failed)} failed"
    )
    for f in report.failed:
        print(f"  FAILED {f['error']}")
    return 1 if report.failed and not report.episodes else 0


if __name__ == "__main__":
    sys.exit(main())
