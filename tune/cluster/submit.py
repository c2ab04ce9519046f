"""``s2ap submit``: run ``s2ap tune <study> --address auto`` on a Ray cluster as a Ray Job."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import IO, Any

from tune.common.console import warn
from tune.study.file import Study, StudyError

__all__ = ["submit_study"]

_TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def _job_status_text(status: Any) -> str:
    return str(getattr(status, "value", status))


def _working_dir(study: Study, working_dir: str | None) -> tuple[Path, Path]:
    """The folder uploaded with the job and the study file relative to it."""
    if study.path is None:
        raise StudyError("submit needs a study file")
    wd = Path(working_dir).resolve() if working_dir else study.path.parent
    try:
        return wd, study.path.relative_to(wd)
    except ValueError:
        raise StudyError(
            f"--working-dir {wd} does not contain the study file {study.path}; pick a folder "
            "above it"
        ) from None


def _excludes(study: Study, wd: Path) -> list[str]:
    """What not to upload: the environment, and the study's own results when they are inside."""
    excludes = [".git", ".venv", "__pycache__", "*.pyc"]
    try:
        excludes.append(f"/{study.storage_root.relative_to(wd).as_posix()}")
    except ValueError:
        pass
    return excludes


def _client(address: str) -> Any:
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as exc:
        raise StudyError(
            f"--address {address}: cannot reach the Ray job API ({exc}); give the dashboard URL "
            "of the head (http://HEAD:8265)"
        ) from None


def _wait(client: Any, job_id: str, timeout_s: float | None) -> str:
    """Poll until the job ends (or ``timeout_s`` passes); return its status."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        status = _job_status_text(client.get_job_status(job_id))
        if status in _TERMINAL or (deadline is not None and time.monotonic() > deadline):
            return status
        time.sleep(2)


def submit_study(
    study: Study,
    address: str,
    *,
    tune_args: list[str] | None = None,
    working_dir: str | None = None,
    wait: bool = False,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
    timeout_s: float | None = None,
) -> tuple[str, str]:
    """Submit ``s2ap tune <study> --address auto`` as a Ray Job; return (job id, final status).

    ``working_dir`` (default: the study file's folder) is uploaded as the job's runtime_env
    working_dir; the entrypoint names the study file relative to it. The storage root is
    passed as an absolute path: on a multi-node cluster it must be shared storage that the
    head (where the job's driver runs) sees at the same path.
    """
    from tune.cluster import check_storage_for_address

    out = out or sys.stdout
    wd, rel = _working_dir(study, working_dir)
    warning = check_storage_for_address(address, study.storage_root)
    if warning:
        warn(warning, err or sys.stderr)
    root = str(study.storage_root)
    entrypoint = shlex.join(
        ["s2ap", "tune", str(rel), "--address", "auto", "--storage-root", root, *(tune_args or [])]
    )
    client = _client(address)
    job_id = client.submit_job(
        entrypoint=entrypoint,
        runtime_env={"working_dir": str(wd), "excludes": _excludes(study, wd)},
        metadata={"s2ap_study": study.name},
    )
    print(f"submitted study {study.name} as Ray job {job_id}", file=out)
    print(f"  entrypoint: {entrypoint}", file=out)
    print(f"  follow:     ray job logs --follow --address {address} {job_id}", file=out)
    print(f"  status:     ray job status --address {address} {job_id}", file=out)
    print(f"  stop:       ray job stop --address {address} {job_id}", file=out, flush=True)
    status = _job_status_text(client.get_job_status(job_id))
    if wait:
        status = _wait(client, job_id, timeout_s)
        print(f"job {job_id}: {status}", file=out)
    return job_id, status
