"""A Hydra callback that tells, at the end of a sweep, which jobs failed and why, and fails the sweep if any did.

How Hydra 1.3 handles a failed job, and why this callback is built the way it is:

* ``run_job`` catches the job's exception and returns a ``JobReturn`` with ``status=FAILED``, so the launcher
  goes on with the other jobs: the basic launcher runs them one after another, joblib, submitit and Ray run
  them in parallel and wait for all of them.
* Once the launcher returns, the basic sweeper reads every job's ``return_value``, which re-raises the first
  failure: the sweep stops there (exit status 1, with that job's traceback) and ``on_multirun_end`` is never
  called. All jobs are one batch unless ``hydra.sweeper.max_batch_size`` is set, so they have all run by then;
  with batches, the batches after a failed one never start (the summary counts only jobs that started).
  The Optuna sweeper raises the same way when a batch has more failures than ``max_failure_rate`` allows;
  below that rate it marks the trials failed and goes on, and ``on_multirun_end`` is called.
* ``on_job_end`` runs wherever the job runs: in this process for the basic launcher, in a worker process for
  joblib, in another process or on another machine for submitit and Ray.

So the record of each job is kept on disk, next to the job's outputs: ``on_job_end`` writes
``.hydra/job_return.yaml`` in the job's dir (and ``error.txt`` when the job failed and did not write one
itself, unless the dir holds a trained run that the job only failed to relaunch), and the summary scans the sweep
dir for them. The summary is printed by ``on_multirun_end`` or, when
the sweeper raised, just before the process exits; a sweep with a failed job exits non-zero either way.
Jobs that ran on another machine are seen only where the sweep dir is on a shared filesystem (as on a SLURM
cluster).
"""

from __future__ import annotations

import atexit
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from trpo.checkpoint import CHECKPOINT_NAME

STATUS_FILE = Path(".hydra") / "job_return.yaml"
ERROR_FILE = "error.txt"
# Files older than the sweep's start by more than this are left-overs of an earlier sweep into the same dir.
CLOCK_SLACK_S = 2.0


@dataclass
class JobRecord:
    """What the summary knows of one job of the sweep."""

    num: Optional[int]
    job_dir: Path
    status: str  # COMPLETED | FAILED | UNFINISHED (started, but never reported an end: killed, timed out)
    overrides: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def failed(self) -> bool:
        return self.status != "COMPLETED"


class SweepSummary(Callback):
    """Records each job's status and, at the end of a ``-m`` sweep, names the failed jobs and fails the sweep.

    Registered in ``conf/config.yaml`` under ``hydra.callbacks.sweep_summary``. ``fail_on_error: false`` prints
    the summary but keeps the exit status of the sweeper (0 when the sweeper itself did not raise).
    """

    def __init__(self, fail_on_error: bool = True) -> None:
        self.fail_on_error = fail_on_error
        self._sweep_dir: Optional[Path] = None
        self._started = 0.0
        self._reported = False

    # -- in the process that launches the sweep ---------------------------------------------------------------

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
        self._started = time.time()
        self._reported = False
        # The basic and Optuna sweepers raise on a failed job before on_multirun_end: report on the way out.
        atexit.register(self._report_at_exit)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        atexit.unregister(self._report_at_exit)
        records = self.report()
        if self.fail_on_error and any(r.failed for r in records):
            # SystemExit is not an Exception: Hydra's callback runner and run_and_report let it through.
            sys.exit(1)

    def _report_at_exit(self) -> None:
        try:
            self.report()
        except Exception as error:  # never hide the sweeper's own error behind one of ours
            print(f"sweep summary unavailable: {type(error).__name__}: {error}", file=sys.stderr, flush=True)

    def report(self) -> list[JobRecord]:
        """Print the summary of the sweep once, and return the job records it is made of."""
        if self._sweep_dir is None or self._reported:
            return []
        self._reported = True
        records = scan_sweep(self._sweep_dir, since=self._started - CLOCK_SLACK_S)
        text = format_summary(self._sweep_dir, records)
        print(text, file=sys.stderr if any(r.failed for r in records) else sys.stdout, flush=True)
        return records

    # -- wherever the job runs ---------------------------------------------------------------------------------

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if OmegaConf.select(config, "hydra.mode", default=None) == RunMode.RUN:
            return  # a single run reports its own failure (run_from_hydra), there is no sweep to sum up
        job_dir = Path(str(config.hydra.runtime.output_dir))
        num = OmegaConf.select(config, "hydra.job.num", default=None)
        overrides = list(job_return.overrides or [])
        record: dict[str, Any] = {"num": num, "status": job_return.status.name, "overrides": overrides}
        if job_return.status != JobStatus.COMPLETED:
            result = job_return._return_value  # the public property re-raises the failure, which we only record
            message = f"{type(result).__name__}: {result}" if isinstance(result, BaseException) else str(result)
            error_file = job_dir / ERROR_FILE
            # run_from_hydra writes its own for a refused config or a crash, and none for a refused relaunch into
            # a trained run's dir, which stays as it was trained.
            if not error_file.exists() and not (job_dir / CHECKPOINT_NAME).exists():
                error_file.write_text(f"{message}\n")
            record["error"] = (_first_line(error_file.read_text()) if error_file.exists() else "") or message
        status_file = job_dir / STATUS_FILE
        status_file.parent.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(record), status_file)


def scan_sweep(sweep_dir: Path, since: float = 0.0) -> list[JobRecord]:
    """The jobs found under ``sweep_dir`` that ran after ``since`` (a time.time()), ordered by job number."""
    records = []
    if not sweep_dir.is_dir():
        return records
    job_dirs = {p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml") if _fresh(p, since)}
    for job_dir in job_dirs:
        status_file, error_file = job_dir / STATUS_FILE, job_dir / ERROR_FILE
        saved = OmegaConf.load(status_file) if _fresh(status_file, since) else OmegaConf.create()
        num = saved.get("num", None)
        if num is None:
            num = _job_num(job_dir)
        overrides = list(saved.get("overrides", None) or OmegaConf.load(job_dir / ".hydra" / "overrides.yaml"))
        status = saved.get("status", "UNFINISHED")
        error = saved.get("error", "") or ""
        if _fresh(error_file, since):
            status, error = "FAILED", _first_line(error_file.read_text()) or error
        records.append(
            JobRecord(
                num=num,
                job_dir=job_dir,
                status=status,
                overrides=[str(o) for o in overrides],
                error=error,
            )
        )
    return sorted(records, key=lambda r: (r.num is None, r.num if r.num is not None else 0, str(r.job_dir)))


def format_summary(sweep_dir: Path, records: list[JobRecord]) -> str:
    """A few lines: the counts, then each failed job's number, its own overrides, its dir and its error."""
    failed = [r for r in records if r.failed]
    head = f"Sweep summary: {len(records)} jobs, {len(records) - len(failed)} completed, {len(failed)} failed"
    lines = [f"{head}  ({_shown(sweep_dir)})"]
    if not failed:
        return lines[0]
    # The overrides shared by every job (env=..., epochs=...) say nothing about which job this is.
    common = set.intersection(*(set(r.overrides) for r in records)) if len(records) > 1 else set()
    for r in failed:
        own = [o for o in r.overrides if o not in common and not o.startswith("hydra.")] or r.overrides
        label = "FAILED" if r.status == "FAILED" else "UNFINISHED (no end reported: killed or timed out?)"
        lines.append(f"  {label} job #{r.num}: {' '.join(own)}")
        lines.append(f"      {r.error or 'no error.txt'}  [{_shown(r.job_dir)}]")
    lines.append(f"sweep failed: {len(failed)} of {len(records)} jobs did not complete (their error.txt says why)")
    return "\n".join(lines)


def _shown(path: Path) -> str:
    """``path`` relative to the working directory where it lies below it, as the user typed the sweep dir."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _fresh(path: Path, since: float) -> bool:
    try:
        return path.stat().st_mtime >= since
    except OSError:
        return False


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _job_num(job_dir: Path) -> Optional[int]:
    try:
        num = OmegaConf.select(OmegaConf.load(job_dir / ".hydra" / "hydra.yaml"), "hydra.job.num")
        return int(num)
    except Exception:
        return None
