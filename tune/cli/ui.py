"""``s2ap ui STUDY.yaml``: the MLflow UI of a study's store on 127.0.0.1, until Ctrl-C."""

from __future__ import annotations

import argparse
from pathlib import Path

from tune.cli.common import (
    Command,
    UserError,
    add_study_arguments,
    load_study_args,
    tracking_uri_for,
)

__all__ = ["COMMAND"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_study_arguments(p)
    p.add_argument("--tracking-uri")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=None)


def run(args: argparse.Namespace) -> int:
    import time

    from tracking.server import MlflowServer

    study = load_study_args(args)
    uri = tracking_uri_for(study, args.tracking_uri)
    if uri.startswith(("http://", "https://")):
        print(f"study {study.name} is tracked by the MLflow server at {uri}; open it in a browser")
        return 0
    db = Path(uri.removeprefix("sqlite:///"))
    if uri.startswith("sqlite:///") and not db.is_file():
        raise UserError(
            f"no MLflow store at {db} yet; run the study first (s2ap tune {args.study})"
        )
    log_dir = study.storage_root / ".mlflow-ui"
    log_dir.mkdir(parents=True, exist_ok=True)
    server = MlflowServer(
        backend_store_uri=uri,
        artifacts_destination=study.storage_root / "mlartifacts",
        log_dir=log_dir,
        host=args.host,
        port=args.port,
    )
    with server:
        print(f"MLflow UI for study {study.name}: {server.url}  (Ctrl-C to stop)", flush=True)
        try:
            while server.is_running():
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


COMMAND = Command("ui", "open the MLflow UI of a study's store on 127.0.0.1", add_arguments, run)
