"""``s2ap ui STUDY.yaml``: the MLflow UI of a study's store on 127.0.0.1, opened on the study's
trials (:func:`tracking.ui.serve_study_ui`), until Ctrl-C."""

from __future__ import annotations

import argparse

from tune.cli.common import (
    PORT,
    Command,
    add_study_arguments,
    load_study_args,
    require_store,
    tracking_uri_for,
)
from tune.common.inputs import check_free_port

__all__ = ["COMMAND"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_study_arguments(p)
    p.add_argument("--tracking-uri")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=PORT, default=None, help="default: a free port")


def run(args: argparse.Namespace) -> int:
    from tracking.ui import serve_study_ui

    # Before anything is written to the store (port 0: the host only; a free port is picked).
    check_free_port(args.host, args.port or 0)
    study = load_study_args(args)
    uri = tracking_uri_for(study, args.tracking_uri)
    require_store(uri, study.name)
    return serve_study_ui(
        uri, study.name, storage_root=study.storage_root, host=args.host, port=args.port
    )


COMMAND = Command("ui", "open the MLflow UI of a study's store on 127.0.0.1", add_arguments, run)
