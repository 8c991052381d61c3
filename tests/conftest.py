"""Shared fixtures: the composed config (via Hydra's compose API), shrunk so tests run in seconds."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from trpo.config import register_resolvers
from trpo.runner import Runner

# One torch thread, as a run uses by default: extra threads only fight the subprocesses the tests start.
torch.set_num_threads(1)
register_resolvers()

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"

# progress.csv columns that measure wall-clock time: the only ones allowed to differ between identical runs.
WALL_CLOCK = {"Time", "SampleTime", "UpdateTime", "ValueFitTime"}

# Small enough for seconds, large enough that every code path (episode ends, evaluation) runs.
# Envs and value fits in the test's own process: a worker per tiny run would cost more than it saves (tests of
# the workers and of the overlap set them).
TINY = [
    "epochs=2",
    "steps_per_epoch=400",
    "eval.episodes=2",
    "optimizer.train_v_iters=5",
    "sampler.workers=0",
    "overlap_value_fit=false",
]


def compose_config(overrides: list[str] | None = None, return_hydra_config: bool = False) -> DictConfig:
    """``conf/config.yaml`` composed with ``overrides``, as ``launch.py`` would see it (with Hydra's own ``hydra``
    section too, launchers and sweepers, if ``return_hydra_config``)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides or [], return_hydra_config=return_hydra_config)


@pytest.fixture
def tiny_cartpole_cfg() -> DictConfig:
    return compose_config(["env=cartpole", "logger.mode=disabled", *TINY])


def launch_env() -> dict[str, str]:
    """The environment of a launched run: W&B quiet, and its own W&B service. Attached to this process's
    service, a killed child's run id would stay registered there and a resume of it would be refused."""
    env = {**os.environ, "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0"}
    env.pop("WANDB_SERVICE", None)
    return env


def launch(args: list[str], cwd: Path = ROOT, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``python launch.py ARGS`` as a user would, W&B offline, and return the finished process."""
    env = launch_env()
    return subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_refusal(result: subprocess.CompletedProcess, *words: str) -> str:
    """A refusal as the README promises it: exit status 2, no traceback, exactly one line on stderr
    (``error: ...``), naming every word."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def read_rows(run_dir: Path) -> list[dict[str, str]]:
    """A run's ``progress.csv``, one dict per epoch."""
    with open(Path(run_dir) / "progress.csv", newline="") as f:
        return list(csv.DictReader(f))


def final_eval_ep_ret(run_dir: Path) -> float:
    """The EvalEpRet a run's ``progress.csv`` ends with."""
    return float(read_rows(run_dir)[-1]["EvalEpRet"])


def without_wall_clock(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k not in WALL_CLOCK} for row in rows]


def wandb_runs(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))


def inspect_wandb(path: Path, summary: bool) -> dict | list[dict]:
    """What a W&B offline run really logged, read back with ``wandb leet inspect``."""
    wandb_cli = Path(sys.executable).with_name("wandb")
    args = [str(wandb_cli), "leet", "inspect", "--json", str(path)]
    if summary:
        args.insert(3, "--summary")
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    if summary:
        return json.loads(out)
    return [json.loads(line) for line in out.splitlines() if line.strip()]


# Fake run dirs, written by hand so that the numbers compare and results read can be worked out on paper.
BASE_CONFIG: dict[str, Any] = {
    "seed": 0,
    "epochs": 3,
    "steps_per_epoch": 100,
    "save_freq": 10,
    "env": {"id": "CartPole-v1", "max_ep_len": 500},
    "policy": {"hidden_sizes": [64, 64], "activation": "tanh"},
    "optimizer": {"delta": 0.01, "lam": 0.97},
    "logger": {"mode": "disabled", "group": None, "tags": []},
}


def write_run(
    run_dir: Path,
    returns: list[float],
    eval_return: Optional[float] = None,
    error: Optional[str] = None,
    progress: bool = True,
    steps_per_epoch: int = 100,
    config: Optional[dict[str, Any]] = None,
    columns: Optional[dict[str, list[Optional[float]]]] = None,
    optimizer: Optional[dict[str, Any]] = None,
) -> Path:
    """A run dir as launch.py leaves it: BASE_CONFIG with ``config``'s dotted keys set, one row per return.

    ``columns``: more progress.csv columns, one value per epoch (None: an empty cell); ``optimizer`` replaces
    the whole optimizer section (as choosing ``optimizer=vpg`` does).
    """
    full = yaml.safe_load(yaml.safe_dump(BASE_CONFIG))  # a deep copy
    if optimizer is not None:
        full["optimizer"] = dict(optimizer)
    override_list = []
    for key, value in (config or {}).items():
        *parents, leaf = key.split(".")
        node = full
        for parent in parents:
            node = node[parent]
        node[leaf] = value
        override_list.append(f"{key}={value}")
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(full))
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(override_list))
    if progress:
        with open(run_dir / "progress.csv", "w", newline="") as f:
            extra = {"KL": [0.01] * len(returns), **(columns or {})}
            evaluated = extra.pop("EvalEpRet", [None] * len(returns))  # evaluations during training (eval.freq)
            writer = csv.DictWriter(f, ["Epoch", "AverageEpRet", "TotalEnvInteracts", *extra, "EvalEpRet"])
            writer.writeheader()
            for epoch, ret in enumerate(returns):
                last = epoch == len(returns) - 1
                writer.writerow({
                    "Epoch": epoch,
                    "AverageEpRet": "nan" if math.isnan(ret) else ret,
                    "TotalEnvInteracts": (epoch + 1) * steps_per_epoch,
                    **{key: "" if values[epoch] is None else values[epoch] for key, values in extra.items()},
                    "EvalEpRet": eval_return if (last and eval_return is not None) else (
                        "" if evaluated[epoch] is None else evaluated[epoch]
                    ),
                })
    if error is not None:
        (run_dir / "error.txt").write_text(error)
    return run_dir


class Stopped(Exception):
    """Stands for a process stopped right after a checkpoint."""


def stop_after_checkpoint(monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    """Make a run raise :class:`Stopped` right after it writes the checkpoint of its first ``epoch`` epochs."""
    save = Runner._save

    def save_then_stop(runner, parts, state, eval_ep_ret) -> None:
        save(runner, parts, state, eval_ep_ret)
        if state.epoch == epoch:
            raise Stopped

    monkeypatch.setattr(Runner, "_save", save_then_stop)
