"""The Runner: builds everything a run needs from its config and drives the epoch loop.

Data flow, one way: config -> Runner -> sampler -> buffer -> update rule -> loggers.
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from trpo.buffer import RolloutBuffer
from trpo.config import ConfigError, validate
from trpo.envs import make_env_batch
from trpo.evaluation import evaluate
from trpo.loggers import EPOCH_KEYS, CSVLogger, WandbLogger
from trpo.networks import ValueFunction, make_policy
from trpo.sampler import Sampler

# Seeds of evaluation episodes are offset so they never replay a training episode's start.
EVAL_SEED_OFFSET = 1_000_000


@dataclass
class RunIdentity:
    """Where a run writes, and how it is named and grouped in W&B."""

    run_dir: Path
    name: Optional[str] = None
    group: Optional[str] = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Runner:
    """Trains one TRPO run as its config says, and returns the final deterministic evaluation return."""

    def __init__(self, cfg: DictConfig, identity: RunIdentity):
        self.cfg = cfg
        self.identity = identity
        self.run_dir = Path(identity.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def run(self) -> float:
        cfg = self.cfg
        torch.set_num_threads(cfg.torch_threads)
        seed_everything(cfg.seed)
        envs = make_env_batch(cfg.env.id, cfg.env.max_ep_len, cfg.sampler.num_envs, cfg.sampler.workers)
        policy = make_policy(envs.observation_space, envs.action_space, **cfg.policy)
        value_function = ValueFunction(
            int(np.prod(envs.observation_space.shape)), cfg.policy.hidden_sizes, cfg.policy.activation
        )
        update_rule = instantiate(cfg.optimizer, policy=policy, value_function=value_function)
        sampler = Sampler(envs, policy, seed=cfg.seed)
        buffer = RolloutBuffer(
            cfg.steps_per_epoch // cfg.sampler.num_envs,
            cfg.sampler.num_envs,
            envs.observation_space.shape,
            envs.action_space.shape,
            envs.action_space.dtype,
        )
        csv_logger = CSVLogger(self.run_dir / "progress.csv", EPOCH_KEYS + ["EvalEpRet"])
        wandb_logger = WandbLogger(
            self.run_dir,
            OmegaConf.to_container(cfg, resolve=True),
            mode=cfg.logger.mode,
            project=cfg.logger.project,
            entity=cfg.logger.entity,
            group=self.identity.group,
            tags=cfg.logger.tags,
            name=self.identity.name,
        )
        progress = Progress(cfg.epochs * buffer.steps * envs.num_envs)
        exit_code = 1
        try:
            start = time.perf_counter()
            for epoch in range(cfg.epochs):
                epoch_start = time.perf_counter()
                episodes = sampler.collect(buffer)
                batch, values = buffer.compute_batch(value_function, update_rule.gamma, update_rule.lam)
                update_start = time.perf_counter()
                stats = update_rule.update(batch)
                update_end = time.perf_counter()
                returns = np.array(episodes.returns) if episodes.returns else np.array([np.nan])
                row = {
                    "Epoch": epoch,
                    "AverageEpRet": float(np.mean(returns)),
                    "StdEpRet": float(np.std(returns)),
                    "MaxEpRet": float(np.max(returns)),
                    "MinEpRet": float(np.min(returns)),
                    "EpLen": float(np.mean(episodes.lengths)) if episodes.lengths else float("nan"),
                    "VVals": float(values.mean()),
                    "TotalEnvInteracts": (epoch + 1) * buffer.steps * envs.num_envs,
                    **stats,
                    "Time": update_end - start,
                    "SampleTime": update_start - epoch_start,
                    "UpdateTime": update_end - update_start,
                }
                last_epoch = epoch == cfg.epochs - 1
                if last_epoch:
                    row["EvalEpRet"] = float(
                        np.mean(
                            evaluate(
                                policy,
                                cfg.env.id,
                                cfg.env.max_ep_len,
                                cfg.eval.episodes,
                                cfg.seed + EVAL_SEED_OFFSET,
                            )
                        )
                    )
                csv_logger.log(row)
                wandb_logger.log(row)
                progress.update(row)
                if (epoch + 1) % cfg.save_freq == 0 or last_epoch:
                    torch.save(
                        {"policy": policy.state_dict(), "value_function": value_function.state_dict()},
                        self.run_dir / "model.pt",
                    )
            wandb_logger.summary({"EvalEpRet": row["EvalEpRet"]})
            exit_code = 0
            return row["EvalEpRet"]
        finally:
            progress.close()
            csv_logger.close()
            wandb_logger.close(exit_code)
            envs.close()


class Progress:
    """A progress bar on a terminal; one plain line per epoch otherwise (sweeps, CI logs, files)."""

    def __init__(self, total_steps: int):
        self.bar = tqdm(total=total_steps, unit="step", dynamic_ncols=True) if sys.stdout.isatty() else None

    def update(self, row: dict) -> None:
        if self.bar is None:
            print(_epoch_line(row), flush=True)
            return
        self.bar.update(row["TotalEnvInteracts"] - self.bar.n)
        self.bar.set_postfix_str(f"epoch {row['Epoch']} AverageEpRet {row['AverageEpRet']:.1f} KL {row['KL']:.4f}")
        if "EvalEpRet" in row:
            self.bar.write(_epoch_line(row))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _epoch_line(row: dict) -> str:
    line = (
        f"epoch {row['Epoch']:>4}  steps {row['TotalEnvInteracts']:>9}  AverageEpRet {row['AverageEpRet']:>9.2f}  "
        f"KL {row['KL']:.4f}  time {row['Time']:.1f}s"
    )
    if "EvalEpRet" in row:
        line += f"  EvalEpRet {row['EvalEpRet']:.2f}"
    return line


def run_from_hydra(cfg: DictConfig) -> float:
    """Validate the composed config, name the run from Hydra's runtime, and train it.

    A refused config is reported as one line on stderr and in ``error.txt`` in the job's dir, before any env
    or W&B run exists. A single run then exits with status 2; a sweep's job raises, so Hydra marks that job
    failed and the other jobs go on. A run that crashes leaves its error in ``error.txt`` too.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        validate(cfg)
    except ConfigError as error:
        (run_dir / "error.txt").write_text(f"{error}\n")
        print(f"error: {error}", file=sys.stderr)
        if multirun:
            raise
        sys.exit(2)
    # One W&B group per sweep, so the dashboard can put a sweep's runs side by side.
    group = cfg.logger.group or (f"sweep-{Path(hydra_cfg.sweep.dir).name}" if multirun else None)
    name = hydra_cfg.job.override_dirname or "default"
    try:
        return Runner(cfg, RunIdentity(run_dir, name=name, group=group)).run()
    except Exception as error:
        (run_dir / "error.txt").write_text(f"run failed: {type(error).__name__}: {error}\n")
        raise
