"""Where each epoch's numbers go: ``progress.csv`` in the run's directory, and a Weights & Biases run.

Both sinks receive the same dict of Spinning Up's keys once per epoch (see :data:`EPOCH_KEYS`).
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from pathlib import Path
from typing import Any, Optional

EPOCH_KEYS = [
    "Epoch",
    "AverageEpRet",
    "StdEpRet",
    "MaxEpRet",
    "MinEpRet",
    "EpLen",
    "VVals",
    "TotalEnvInteracts",
    "LossPi",
    "LossV",
    "DeltaLossPi",
    "DeltaLossV",
    "KL",
    "BacktrackIters",
    "KLExceeded",  # 1 if the accepted step's KL is above delta (only possible without the line search)
    "SurrogateWorse",  # 1 if the accepted step lowered the surrogate advantage
    "StepScale",  # the full step's length against the trust region's boundary: 1, or less where natural_lr caps it
    "SkippedUpdates",  # epochs so far whose policy step or value fit was dropped for non-finite numbers
    "Time",
    # seconds from the epoch's start to its update: sampling, the wait for an overlapped value fit, and GAE
    "SampleTime",
    "UpdateTime",  # seconds this epoch waited for its update: the policy step, and the value fit unless overlapped
    "ValueFitTime",  # seconds the value fit took where it ran (beside the next epoch's sampling when overlapped)
]


class CSVLogger:
    """Appends one row per epoch to ``path``, the keys as columns, flushing each row so a crash loses none."""

    def __init__(self, path: Path, keys: list[str] = EPOCH_KEYS):
        self.path = Path(path)
        self.keys = keys
        new_file = not self.path.exists() or self.path.stat().st_size == 0
        self._file = open(self.path, "a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=keys)
        if new_file:
            self._writer.writeheader()
            self._file.flush()

    def log(self, row: dict[str, Any]) -> None:
        self._writer.writerow({k: row.get(k, "") for k in self.keys})
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class WandbLogger:
    """One W&B run per job, its files under ``run_dir/wandb``; offline by default, so no login is needed.

    W&B never stops training: ``online`` without network or key gives up after ``init_timeout`` seconds and
    falls back to ``offline`` with a warning; if W&B cannot start at all, or fails while logging, it is disabled
    for the rest of the run with a warning (``progress.csv`` stays complete). ``run_id`` continues an earlier run
    (resume).
    """

    def __init__(
        self,
        run_dir: Path,
        config: dict[str, Any],
        mode: str,
        project: str,
        entity: Optional[str],
        group: Optional[str],
        tags: list[str],
        name: Optional[str],
        run_id: Optional[str] = None,
        init_timeout: float = 30.0,
        job_type: str = "train",
    ):
        import wandb

        init_args = dict(
            dir=str(run_dir),
            config=config,
            project=project,
            entity=entity,
            group=group,
            tags=list(tags),
            name=name,
            job_type=job_type,
            id=run_id,
            resume="allow" if run_id else None,
        )
        init_timeout = float(os.environ.get("WANDB_INIT_TIMEOUT", init_timeout))  # the user's env var wins
        settings = dict(console="off", quiet=True, x_disable_stats=True, init_timeout=init_timeout)
        self.run = None
        # online falls back to offline; if W&B cannot start at all, the run trains on without it.
        for attempt in ("online", "offline") if mode == "online" else (mode,):
            try:
                self.run = wandb.init(mode=attempt, settings=wandb.Settings(**settings), **init_args)
                return
            except Exception as error:
                fallback = "logging offline instead" if attempt == "online" else "training on without W&B"
                warnings.warn(f"W&B {attempt} failed ({type(error).__name__}: {error}); {fallback}")

    @property
    def run_id(self) -> Optional[str]:
        return self.run.id if self.run is not None else None

    def log(self, row: dict[str, Any]) -> None:
        clean = {k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}
        self._safely(lambda: self.run.log(clean, step=int(row["Epoch"])))

    def summary(self, values: dict[str, Any]) -> None:
        self._safely(lambda: self.run.summary.update(values))

    def close(self, exit_code: int = 0) -> None:
        self._safely(lambda: self.run.finish(exit_code=exit_code))

    def _safely(self, action) -> None:
        if self.run is None:
            return
        try:
            action()
        except Exception as error:
            warnings.warn(f"W&B failed ({type(error).__name__}: {error}); continuing without it")
            self.run = None
