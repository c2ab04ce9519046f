"""``s2ap tune STUDY.yaml``: launch, resume or start over a study (:mod:`tune.driver.launch`)."""

from __future__ import annotations

import argparse

from tune.cli.common import (
    NON_NEGATIVE_INT,
    POSITIVE_INT,
    Command,
    add_study_arguments,
    load_study_args,
)
from tune.common.inputs import check_writable_folder

__all__ = ["COMMAND"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_study_arguments(p)
    p.add_argument("--resume", action="store_true", help="continue an interrupted study")
    p.add_argument(
        "--overwrite", action="store_true", help="delete the study's results, start over"
    )
    p.add_argument(
        "--address",
        help="join a Ray cluster (auto, or HOST:PORT of the head); default: a local Ray runtime",
    )
    p.add_argument("--tracking-uri", help="MLflow tracking URI (overrides study.tracking_uri)")
    p.add_argument(
        "--wait-for-tracking",
        type=NON_NEGATIVE_INT,
        default=0,
        metavar="SECONDS",
        help="give an http(s) tracking server that does not answer yet this long to come up "
        "(e.g. one starting beside the driver) before the launch is refused (default: refuse "
        "at once)",
    )
    p.add_argument("--num-samples", type=POSITIVE_INT, help="override study.num_samples")
    p.add_argument(
        "--num-cpus", type=POSITIVE_INT, help="local runtime: CPUs Ray may use (default: all)"
    )
    p.add_argument(
        "--num-gpus", type=NON_NEGATIVE_INT, help="local runtime: GPUs Ray may use (default: all)"
    )
    p.add_argument("--ray-temp-dir", help="local runtime: Ray's temp dir (keep the path short)")
    p.add_argument(
        "--skip-resource-check",
        action="store_true",
        help="do not check that a node can hold a trial (autoscaling clusters)",
    )
    p.add_argument(
        "--shared-storage",
        action="store_true",
        help="the storage root is shared storage on every node (silences the multi-node warning)",
    )
    p.add_argument(
        "--no-test-eval", action="store_true", help="skip the best trial's test evaluation"
    )
    p.add_argument(
        "-v",
        "--verbose",
        type=int,
        default=1,
        choices=(0, 1, 2, 3),
        help="console output while the study runs: 0 none (as -q); 1 one line per trial event "
        "(started, stopped by ASHA, completed, failed) and a progress line (default); 2 also "
        "Ray Tune's own reporter (a config and a result box per trial, a status table every "
        "30 s) and Ray's INFO logs; 3 also Ray Tune's result box for every epoch",
    )
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no trial lines and no progress line (verbose 0); the summary still prints",
    )


def run(args: argparse.Namespace) -> int:
    from tune.driver.launch import LaunchOptions, run_study

    study = load_study_args(args)
    check_writable_folder(study.storage_root, "study.storage_root")
    if args.ray_temp_dir:
        check_writable_folder(args.ray_temp_dir, "--ray-temp-dir")
    options = LaunchOptions(
        address=args.address,
        resume=args.resume,
        overwrite=args.overwrite,
        tracking_uri=args.tracking_uri,
        wait_for_tracking=float(args.wait_for_tracking),
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
        ray_temp_dir=args.ray_temp_dir,
        skip_resource_check=args.skip_resource_check,
        shared_storage=args.shared_storage,
        test_eval=False if args.no_test_eval else None,
        verbose=0 if args.quiet else args.verbose,
    )
    return run_study(study, options).exit_code


COMMAND = Command("tune", "launch (or --resume) a study", add_arguments, run)
