"""``avdp-build-engine BUNDLE``: build the TensorRT engines of a bundle ahead of time, on the
machine (GPU model + TensorRT version) that will run them.

Engines go to BUNDLE/engines/ (or --engine-dir), keyed by GPU name + TensorRT version + ONNX
SHA-256 + precision, with a shared timing cache, so a second build is fast and a load never
picks an engine made for another GPU. See docs/deployment.md.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="avdp-build-engine", description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", help="bundle directory written by avdp-export")
    p.add_argument("--precision", choices=("fp16", "fp32"), default="fp16", help="default %(default)s")
    p.add_argument("--device", default="cuda:0", help="CUDA device to build for (default %(default)s)")
    p.add_argument("--engine-dir", default=None, help="engine cache directory (default BUNDLE/engines)")
    p.add_argument("--workspace-gb", type=float, default=2.0, help="builder workspace (default %(default)s GB)")
    p.add_argument("--force", action="store_true", help="rebuild even when a matching engine exists")
    p.add_argument("--refuse-mismatch", action="store_true",
                   help="fail instead of building when the cache holds engines for another GPU / TensorRT")
    a = p.parse_args(argv)

    from avdp_ros.deploy.bundle import Bundle, BundleError
    from avdp_ros.deploy.trt import EngineBuildError, current_target, ensure_engines

    try:
        bundle = Bundle(a.bundle)
        target = current_target(a.device, a.precision)
        print(f"avdp-build-engine: {bundle.path} for {target.describe()}")
        engines = ensure_engines(bundle, target, a.engine_dir, "refuse" if a.refuse_mismatch else "rebuild",
                                 build_missing=True, workspace_gb=a.workspace_gb, force=a.force)
    except ImportError as err:
        print(f"avdp-build-engine: {err}", file=sys.stderr)
        return 2
    except (BundleError, EngineBuildError, RuntimeError, ValueError) as err:
        print(f"avdp-build-engine: {err}", file=sys.stderr)
        return 1
    for stage, path in engines.items():
        print(f"  {stage:15s} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
