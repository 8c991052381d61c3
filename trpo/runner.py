"""The Runner: builds everything a run needs from its config and drives the epoch loop.

Data flow, one way: config -> Runner -> sampler -> buffer -> update rule -> loggers.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from trpo.buffer import Batch, RolloutBuffer
from trpo.checkpoint import CHECKPOINT_NAME, CheckpointError, check_compatible, load_checkpoint, save_checkpoint
from trpo.config import ConfigError, env_kwargs, has_schedule, training_keys, validate
from trpo.envs import EnvBatch, SubprocEnvBatch, make_env_batch
from trpo.evaluation import EVAL_SEED_OFFSET, evaluate
from trpo.loggers import EPOCH_KEYS, CSVLogger, WandbLogger
from trpo.networks import Policy, ValueFunction, make_policy
from trpo.normalization import ObservationNormalizer, RewardScaler
from trpo.sampler import EpisodeRecord, Sampler
from trpo.updates import UpdateRule, finite_outcome
from trpo.value_fit import ChildProcessValueFit, InlineValueFit, make_value_fit


@dataclass
class RunIdentity:
    """Where a run writes, and how it is named and grouped in W&B."""

    run_dir: Path
    name: str | None = None
    group: str | None = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# Hydra rewrites these for every launch into a run dir, before the config is checked; each checkpoint keeps the
# ones its run was trained with, to put back after a launch that did not train it.
HYDRA_FILES = ("config.yaml", "overrides.yaml", "hydra.yaml")


def read_hydra_files(run_dir: Path) -> dict[str, str]:
    """The texts of the run's ``.hydra`` files that exist, by name."""
    hydra_dir = run_dir / ".hydra"
    return {name: (hydra_dir / name).read_text() for name in HYDRA_FILES if (hydra_dir / name).is_file()}


def restore_trained_hydra_files(run_dir: Path) -> None:
    """Make the run's ``.hydra`` files those its checkpoint was saved with. After a launch that trained (and so
    saved), they are already; after one that was refused, or found the run finished, Hydra's rewrite is undone, so
    the run is still evaluated, resumed and compared as what it is. Checkpoints written before 2026-12-07 kept only
    the config, as ``config``."""
    try:
        checkpoint = load_checkpoint(run_dir)
    except CheckpointError:
        return  # nothing trustworthy to put back; the launch has said what is wrong with it
    for name, text in checkpoint.get("hydra_files", {"config.yaml": checkpoint.get("config")}).items():
        path = run_dir / ".hydra" / name
        if text is not None and path.is_file() and path.read_text() != text:
            path.write_text(text)


class NonFiniteError(RuntimeError):
    """Training produced non-finite numbers too many epochs in a row."""


# Consecutive epochs whose data or losses may be non-finite before the run stops.
MAX_NON_FINITE_EPOCHS = 3


@dataclass
class RunParts:
    """What a run builds from its config: the envs and the sampler that steps them with the policy, the buffer, the
    networks and the update rule that improves them, and the optional normalisers."""

    envs: EnvBatch | SubprocEnvBatch
    policy: Policy
    value_function: ValueFunction
    update_rule: UpdateRule
    obs_normalizer: ObservationNormalizer | None
    reward_scaler: RewardScaler | None
    sampler: Sampler
    buffer: RolloutBuffer


@dataclass
class TrainingState:
    """Where a run stands: epochs done (so ``epoch`` is the next one's index), seconds trained, its W&B run, its
    updates skipped so far and how many of the last epochs in a row skipped theirs; a fresh run has zeros and no
    W&B run yet. A checkpoint records it, and a resumed run starts from it."""

    epoch: int = 0
    elapsed: float = 0.0
    wandb_run_id: str | None = None
    skipped_updates: int = 0
    non_finite_streak: int = 0


class EpochLog:
    """Completes each epoch's row with its value fit and writes it to every logger; counts skipped updates, and
    raises :class:`NonFiniteError` after MAX_NON_FINITE_EPOCHS of them in a row."""

    def __init__(
        self,
        value_fit: InlineValueFit | ChildProcessValueFit,
        loggers: Sequence[CSVLogger | WandbLogger | Progress],
        skipped_updates: int,
        non_finite_streak: int,
    ):
        self.value_fit = value_fit
        self.loggers = loggers
        self.skipped_updates = skipped_updates
        self.non_finite_streak = non_finite_streak

    def complete(self, row: dict, policy_stats: dict | None) -> None:
        """Wait for the epoch's value fit (kept only if its policy step was, ``policy_stats`` not None), add its
        stats and ``SkippedUpdates`` to ``row`` in place, and log the row. Called after the next epoch's sampling
        when the fit overlaps it, and always before the value function is read again."""
        value_stats = self.value_fit.finish(keep=policy_stats is not None)
        if value_stats is None:
            self.skipped_updates += 1
            self.non_finite_streak += 1
            if self.non_finite_streak >= MAX_NON_FINITE_EPOCHS:
                raise NonFiniteError(
                    f"non-finite observations, rewards or losses in {self.non_finite_streak} epochs in a row "
                    f"(epochs {row['Epoch'] - self.non_finite_streak + 1}-{row['Epoch']}); the last checkpoint "
                    "is intact"
                )
        else:
            self.non_finite_streak = 0
            row.update(value_stats)
        row["SkippedUpdates"] = self.skipped_updates
        for logger in self.loggers:
            logger.log(row)


class Runner:
    """Trains one run as its config says, and returns the final deterministic evaluation return.

    If the run's directory already holds a checkpoint (a resumed or requeued run), training continues from it:
    same networks, optimiser states, RNG state and env states, so the remaining epochs give the same
    ``progress.csv`` rows as a run that was never stopped (wall-clock columns aside).
    """

    def __init__(self, cfg: DictConfig, identity: RunIdentity):
        self.cfg = cfg
        self.identity = identity
        self.run_dir = Path(identity.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def run(self) -> float:
        cfg = self.cfg
        torch.set_num_threads(cfg.torch_threads)
        seed_everything(cfg.seed)
        checkpoint = load_checkpoint(self.run_dir) if (self.run_dir / CHECKPOINT_NAME).exists() else None
        if checkpoint is not None:
            self._check_continuable(checkpoint)
        (self.run_dir / "error.txt").unlink(missing_ok=True)  # an earlier attempt's failure, which this one ends
        if checkpoint is not None and checkpoint["epoch"] >= cfg.epochs:
            if checkpoint["eval_ep_ret"] is None:
                raise CheckpointError(
                    f"{self.run_dir} stopped after epoch {checkpoint['epoch']}, before its final evaluation: "
                    f"continue it with epochs > {checkpoint['epoch']}"
                )
            print(f"{self.run_dir} already finished; EvalEpRet {checkpoint['eval_ep_ret']:.2f}")
            return checkpoint["eval_ep_ret"]
        with contextlib.ExitStack() as cleanup:  # closes what was built, last first, however the run ends
            return self._train(checkpoint, cleanup)

    def _check_continuable(self, checkpoint: dict) -> None:
        """Refuse to continue ``checkpoint`` with this config where a key it was trained with differs, or where
        other ``epochs`` would make its schedules jump."""
        cfg = self.cfg
        try:
            check_compatible(checkpoint, training_keys(cfg))
            planned = checkpoint.get("epochs", cfg.epochs)  # older checkpoints did not record it
            if planned != cfg.epochs and has_schedule(cfg):
                raise CheckpointError(
                    f"checkpoint was trained with epochs={planned}, but this run has epochs={cfg.epochs}: its linear "
                    "schedules (vf_lr_schedule, delta_schedule, final_log_std) would jump"
                )
        except CheckpointError as error:
            raise CheckpointError(f"{error} (train this config in another run dir)") from None

    def _train(self, checkpoint: dict | None, cleanup: contextlib.ExitStack) -> float:
        """Build the run's parts (restored from ``checkpoint``, if any) and its loggers, registering each with
        ``cleanup`` as it is built, and train the remaining epochs."""
        cfg = self.cfg
        parts = self._build(cleanup)
        initial = self._restore(parts, checkpoint) if checkpoint is not None else TrainingState()
        keep_progress_rows(self.run_dir / "progress.csv", initial.epoch)
        # Before the loggers: the fit's child process is forked from this one before W&B starts its threads.
        value_fit = make_value_fit(parts.update_rule, background=cfg.overlap_value_fit)
        cleanup.callback(value_fit.close)
        csv_logger = CSVLogger(self.run_dir / "progress.csv", EPOCH_KEYS + ["EvalEpRet"])
        cleanup.callback(csv_logger.close)
        wandb_logger = WandbLogger(
            self.run_dir,
            OmegaConf.to_container(cfg, resolve=True),
            mode=cfg.logger.mode,
            project=cfg.logger.project,
            entity=cfg.logger.entity,
            group=self.identity.group,
            tags=cfg.logger.tags,
            name=self.identity.name,
            run_id=initial.wandb_run_id,
        )
        # What W&B records for the run: 1 unless training returns (set to 0 below); the callback reads it at exit.
        exit_code = 1
        cleanup.callback(lambda: wandb_logger.close(exit_code))
        progress = Progress(cfg.epochs * parts.buffer.steps * parts.envs.num_envs)
        cleanup.callback(progress.close)
        epoch_log = EpochLog(
            value_fit,
            (csv_logger, wandb_logger, progress),
            skipped_updates=initial.skipped_updates,
            non_finite_streak=initial.non_finite_streak,
        )
        policy, update_rule, buffer = parts.policy, parts.update_rule, parts.buffer
        start = time.perf_counter() - initial.elapsed
        # With overlap_value_fit, an epoch's value fit runs while the next epoch samples; its row waits here.
        # A skipped policy step drops its epoch's value fit too (keep=False).
        waiting: tuple[dict, dict | None] | None = None
        for epoch in range(initial.epoch, cfg.epochs):
            epoch_start = time.perf_counter()
            policy.anneal(epoch / cfg.epochs)
            episodes = parts.sampler.collect(buffer)
            if waiting is not None:
                epoch_log.complete(*waiting)
                waiting = None
            # Only now: the previous epoch's value fit, which may have run until here, keeps its own rate.
            update_rule.anneal(epoch / cfg.epochs)
            batch, values = buffer.compute_batch(
                parts.value_function, update_rule.gamma, update_rule.lam, update_rule.vf_target
            )
            update_start = time.perf_counter()
            value_fit.start(batch)  # V's regression needs only the batch: it runs beside the policy step
            policy_stats = guarded_policy_step(update_rule, batch)
            update_end = time.perf_counter()
            row = {
                "Epoch": epoch,
                **episode_stats(episodes),
                "VVals": float(values.mean()),
                "TotalEnvInteracts": (epoch + 1) * buffer.steps * parts.envs.num_envs,
                **(policy_stats or {}),
                "Time": update_end - start,
                "SampleTime": update_start - epoch_start,
                "UpdateTime": update_end - update_start,
            }
            last_epoch = epoch == cfg.epochs - 1
            if last_epoch or (cfg.eval.freq > 0 and (epoch + 1) % cfg.eval.freq == 0):
                row["EvalEpRet"] = self._evaluate(parts)
            if (epoch + 1) % cfg.save_freq != 0 and not last_epoch:
                if value_fit.overlaps_sampling:
                    waiting = (row, policy_stats)
                else:
                    epoch_log.complete(row, policy_stats)
                continue
            # A checkpoint holds the epoch's fitted value function, so it waits for the fit here.
            epoch_log.complete(row, policy_stats)
            self._save(
                parts,
                TrainingState(
                    epoch=epoch + 1,
                    elapsed=time.perf_counter() - start,
                    wandb_run_id=wandb_logger.run_id,
                    skipped_updates=epoch_log.skipped_updates,
                    non_finite_streak=epoch_log.non_finite_streak,
                ),
                eval_ep_ret=row["EvalEpRet"] if last_epoch else None,  # the final one, not eval.freq's
            )
        wandb_logger.summary({"EvalEpRet": row["EvalEpRet"]})
        exit_code = 0
        return row["EvalEpRet"]

    def _build(self, cleanup: contextlib.ExitStack) -> RunParts:
        """The envs, networks, update rule, normalisers, sampler and buffer that the config describes; the envs'
        close goes on ``cleanup`` at once, so a config refused later in the build leaves no env workers alive."""
        cfg = self.cfg
        envs = make_env_batch(
            cfg.env.id,
            cfg.env.max_ep_len,
            cfg.sampler.num_envs,
            cfg.sampler.workers,
            cfg.sampler.clip_actions,
            make_kwargs=env_kwargs(cfg),
        )
        cleanup.callback(envs.close)
        policy = make_policy(envs.observation_space, envs.action_space, **cfg.policy)
        value_function = ValueFunction(
            int(np.prod(envs.observation_space.shape)),
            cfg.policy.hidden_sizes,
            cfg.policy.activation,
            cfg.policy.ortho_init,
        )
        update_rule = instantiate(cfg.optimizer, policy=policy, value_function=value_function)
        obs_normalizer = ObservationNormalizer(envs.observation_space.shape) if cfg.sampler.normalize_obs else None
        reward_scaler = RewardScaler(envs.num_envs, cfg.optimizer.gamma) if cfg.sampler.normalize_rewards else None
        buffer = RolloutBuffer(
            cfg.steps_per_epoch // cfg.sampler.num_envs,
            cfg.sampler.num_envs,
            envs.observation_space.shape,
            envs.action_space.shape,
            envs.action_space.dtype,
        )
        return RunParts(
            envs=envs,
            policy=policy,
            value_function=value_function,
            update_rule=update_rule,
            obs_normalizer=obs_normalizer,
            reward_scaler=reward_scaler,
            sampler=Sampler(envs, policy, cfg.seed, obs_normalizer, reward_scaler),
            buffer=buffer,
        )

    def _restore(self, parts: RunParts, checkpoint: dict) -> TrainingState:
        """Load ``checkpoint`` into ``parts`` (networks, update rule, normalisers, env states and torch's RNG, so the
        run goes on as if never stopped); returns where the run stopped."""
        try:
            parts.policy.load_state_dict(checkpoint["policy"])
            parts.value_function.load_state_dict(checkpoint["value_function"])
            parts.update_rule.load_state_dict(checkpoint["update_rule"])
        except (KeyError, RuntimeError, ValueError) as error:  # a checkpoint older than the keys it is checked on
            raise CheckpointError(
                f"checkpoint {self.run_dir / CHECKPOINT_NAME} holds networks that do not fit this run's config "
                f"({type(error).__name__})"
            ) from None
        for stats, state in (
            (parts.obs_normalizer, checkpoint["obs_normalizer"]),
            (parts.reward_scaler, checkpoint["reward_scaler"]),
        ):
            if stats is not None:
                stats.load_state_dict(state)
        parts.sampler.obs = parts.envs.set_state(checkpoint["envs"])
        torch.set_rng_state(checkpoint["torch_rng"])
        print(f"resuming {self.run_dir} at epoch {checkpoint['epoch']}")
        return TrainingState(
            epoch=checkpoint["epoch"],
            elapsed=checkpoint["elapsed"],
            wandb_run_id=checkpoint["wandb_run_id"],
            skipped_updates=checkpoint.get("skipped_updates", 0),
            non_finite_streak=checkpoint.get("non_finite_streak", 0),
        )

    def _evaluate(self, parts: RunParts) -> float:
        """The mean return of the deterministic evaluation episodes. They are the same seeded episodes every time,
        so the evaluations during training form one curve with the final one; they step their own env and draw no
        random numbers, so training goes on as without them."""
        cfg = self.cfg
        eval_returns = evaluate(
            parts.policy,
            cfg.env.id,
            cfg.env.max_ep_len,
            cfg.eval.episodes,
            cfg.seed + EVAL_SEED_OFFSET,
            obs_filter=parts.obs_normalizer,  # frozen: evaluate() only applies it
            make_kwargs=env_kwargs(cfg),
            clip_actions=cfg.sampler.clip_actions,
        )
        return float(np.mean(eval_returns))

    def _save(self, parts: RunParts, state: TrainingState, eval_ep_ret: float | None) -> None:
        """Write the checkpoint that a resumed run continues from, and that task=eval loads. ``eval_ep_ret`` is the
        final evaluation's return, None before the last epoch: :meth:`run` reads it to tell a finished run."""
        cfg = self.cfg
        save_checkpoint(
            self.run_dir,
            {
                "epoch": state.epoch,
                "epochs": cfg.epochs,  # the schedules' horizon
                "hydra_files": read_hydra_files(self.run_dir),  # to put back on a refused relaunch
                "elapsed": state.elapsed,
                "skipped_updates": state.skipped_updates,
                "non_finite_streak": state.non_finite_streak,  # a resumed run stops where this one would
                "eval_ep_ret": eval_ep_ret,
                "model": training_keys(cfg),
                "policy": parts.policy.state_dict(),
                "value_function": parts.value_function.state_dict(),
                "update_rule": parts.update_rule.state_dict(),
                "obs_normalizer": parts.obs_normalizer.state_dict() if parts.obs_normalizer else None,
                "reward_scaler": parts.reward_scaler.state_dict() if parts.reward_scaler else None,
                "envs": parts.envs.get_state(),
                "torch_rng": torch.get_rng_state(),
                "wandb_run_id": state.wandb_run_id,
                "identity": {"name": self.identity.name, "group": self.identity.group},
            },
        )


def episode_stats(episodes: EpisodeRecord) -> dict[str, float]:
    """Spinning Up's episode keys over the episodes that finished in the epoch (NaN when none did)."""
    returns = np.array(episodes.returns) if episodes.returns else np.array([np.nan])
    return {
        "AverageEpRet": float(np.mean(returns)),
        "StdEpRet": float(np.std(returns)),
        "MaxEpRet": float(np.max(returns)),
        "MinEpRet": float(np.min(returns)),
        "EpLen": float(np.mean(episodes.lengths)) if episodes.lengths else float("nan"),
    }


def guarded_policy_step(update_rule: UpdateRule, batch: Batch) -> dict[str, float] | None:
    """Run the policy step unless the batch holds non-finite numbers; if the step itself produces any, restore
    the policy and the update rule's optimiser states as they were. Returns the step's stats, or None when it
    was skipped (and then the epoch's value fit is skipped too)."""
    fields = (batch.obs, batch.advantages, batch.returns, batch.logp_old)
    if not all(torch.isfinite(t).all() for t in fields):
        return None
    saved = copy.deepcopy(update_rule.policy.state_dict()), copy.deepcopy(update_rule.state_dict())
    stats = update_rule.improve_policy(batch)
    if finite_outcome(update_rule.policy, stats):
        return stats
    update_rule.policy.load_state_dict(saved[0])
    update_rule.load_state_dict(saved[1])
    return None


def keep_progress_rows(path: Path, epochs: int) -> None:
    """Drop the rows of epochs at or after ``epochs``: they were logged after the checkpoint and are redone. With
    ``epochs`` 0 (no checkpoint) the file goes: a fresh run writes its own header, whatever was there before."""
    if not path.exists():
        return
    if epochs == 0:
        path.unlink()
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    kept = rows[:1] + [r for r in rows[1:] if r and int(r[0]) < epochs]
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(kept)
    os.replace(tmp, path)


class Progress:
    """A progress bar on a terminal; one plain line per epoch otherwise (sweeps, CI logs, files)."""

    def __init__(self, total_steps: int):
        self.bar = tqdm(total=total_steps, unit="step", dynamic_ncols=True) if sys.stdout.isatty() else None

    def log(self, row: dict) -> None:
        if self.bar is None:
            print(_epoch_line(row), flush=True)
            return
        self.bar.update(row["TotalEnvInteracts"] - self.bar.n)
        kl = row.get("KL", float("nan"))  # a skipped update (non-finite numbers) has no KL
        self.bar.set_postfix_str(f"epoch {row['Epoch']} AverageEpRet {row['AverageEpRet']:.1f} KL {kl:.4f}")
        if "EvalEpRet" in row:
            self.bar.write(_epoch_line(row))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _epoch_line(row: dict) -> str:
    line = (
        f"epoch {row['Epoch']:>4}  steps {row['TotalEnvInteracts']:>9}  AverageEpRet {row['AverageEpRet']:>9.2f}  "
        f"KL {row.get('KL', float('nan')):.4f}  time {row['Time']:.1f}s"
    )
    if "EvalEpRet" in row:
        line += f"  EvalEpRet {row['EvalEpRet']:.2f}"
    return line


def run_from_hydra(cfg: DictConfig) -> float:
    """Validate the composed config, name the run from Hydra's runtime, and train (or resume, or evaluate) it.

    A refused config or checkpoint is reported as one line on stderr and in ``error.txt`` in the job's dir,
    before any env or W&B run exists. A single run then exits with status 2; a sweep's job raises, so Hydra marks
    that job failed and the other jobs go on. A run that crashes leaves its error in ``error.txt`` too. A launch into
    a trained run's dir that does not train it (refused, or the run already finished) leaves the run as it was
    trained: no ``error.txt``, and its ``.hydra`` files put back (:func:`restore_trained_hydra_files`).
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    job_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    # One W&B group per sweep, so the dashboard can put a sweep's runs side by side.
    group = cfg.logger.group or (f"sweep-{Path(hydra_cfg.sweep.dir).name}" if multirun else None)
    identity = RunIdentity(job_dir, name=hydra_cfg.job.override_dirname or "default", group=group)
    relaunch = (job_dir / CHECKPOINT_NAME).exists()  # into a trained run's dir
    try:
        validate(cfg)
        if cfg.task == "eval":
            from trpo.evaluation import evaluate_checkpoint

            return evaluate_checkpoint(cfg, job_dir)
        if cfg.resume is not None:
            ignored = [override for override in hydra_cfg.overrides.task if not override.startswith("resume=")]
            if ignored:
                print(f"note: resume= goes on with the run's own config; ignored: {' '.join(ignored)}", file=sys.stderr)
            cfg, identity = resumed_run(Path(cfg.resume))
        return Runner(cfg, identity).run()
    except (ConfigError, CheckpointError) as error:
        if not relaunch:
            (job_dir / "error.txt").write_text(f"{error}\n")
        print(f"error: {error}", file=sys.stderr)
        if multirun:
            raise
        sys.exit(2)
    except Exception as error:
        (job_dir / "error.txt").write_text(f"run failed: {type(error).__name__}: {error}\n")
        raise
    finally:
        if relaunch:
            restore_trained_hydra_files(job_dir)


def resumed_run(run_dir: Path) -> tuple[DictConfig, RunIdentity]:
    """The saved config and identity of the run in ``run_dir``, to continue it where it stopped."""
    saved = run_dir / ".hydra" / "config.yaml"
    if not saved.is_file():
        raise ConfigError(f"resume={str(run_dir)!r} is not allowed: it holds no run (no .hydra/config.yaml)")
    cfg = OmegaConf.load(saved)
    cfg.resume = None
    validate(cfg)
    name, group = None, None
    if (run_dir / CHECKPOINT_NAME).exists():
        identity = load_checkpoint(run_dir).get("identity", {})
        name, group = identity.get("name"), identity.get("group")
    return cfg, RunIdentity(run_dir, name=name, group=group)
