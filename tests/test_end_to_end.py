"""End to end: the real command trains, writes progress.csv and a W&B run, sweeps, and refuses bad input."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from tests.conftest import TINY, assert_one_line_refusal, compose_config, inspect_wandb, launch, read_rows, wandb_runs
from trpo.loggers import EPOCH_KEYS
from trpo.runner import RunIdentity, Runner
from trpo.sampler import Sampler


@pytest.mark.parametrize("env", ["hopper", "cartpole"])
def test_run_writes_progress_csv_and_wandb_run(tmp_path: Path, env: str) -> None:
    """A short run logs every epoch key to progress.csv and to an offline W&B run, plus EvalEpRet at the end."""
    run_dir = tmp_path / "run"
    result = launch([f"env={env}", *TINY, f"hydra.run.dir={run_dir}"])
    assert result.returncode == 0, result.stderr

    rows = read_rows(run_dir)
    assert len(rows) == 2
    assert set(EPOCH_KEYS) <= set(rows[0])
    # Random hopper and cartpole episodes end within each epoch, so every epoch key has a number here.
    assert all(math.isfinite(float(row[key])) for row in rows for key in EPOCH_KEYS)
    assert [int(r["TotalEnvInteracts"]) for r in rows] == [400, 800]
    assert all(math.isfinite(float(r["KL"])) and float(r["KL"]) <= 0.01 * 1.0001 for r in rows)
    assert math.isfinite(float(rows[-1]["EvalEpRet"]))
    assert (run_dir / "checkpoint.pt").exists()

    [wandb_file] = wandb_runs(run_dir)
    logged = inspect_wandb(wandb_file, summary=True)
    assert logged["config"]["env"]["id"] == {"hopper": "Hopper-v5", "cartpole": "CartPole-v1"}[env]
    assert logged["config"]["steps_per_epoch"] == 400
    assert logged["exit_code"] == 0
    for key in set(EPOCH_KEYS) - {"AverageEpRet", "StdEpRet", "MaxEpRet", "MinEpRet", "EpLen"}:
        assert key in logged["summary"], key
    assert logged["summary"]["EvalEpRet"] == pytest.approx(float(rows[-1]["EvalEpRet"]))


def test_sweep_gives_one_wandb_group_and_named_runs(tmp_path: Path) -> None:
    """`-m optimizer.delta=0.01,0.02` runs two jobs whose W&B runs share one group and are named by override.
    With the value fit in its child process, as by default: the second job forks it after the first job's W&B."""
    sweep_dir = tmp_path / "sweep"
    overrides = ["env=cartpole", "optimizer.delta=0.01,0.02", *TINY, "overlap_value_fit=true"]
    result = launch(["-m", *overrides, f"hydra.sweep.dir={sweep_dir}"])
    assert result.returncode == 0, result.stderr

    records = []
    for job in ("0", "1"):
        [wandb_file] = wandb_runs(sweep_dir / job)
        [run] = [r["run"] for r in inspect_wandb(wandb_file, summary=False) if r["type"] == "run"]
        records.append(run)
        assert len(read_rows(sweep_dir / job)) == 2
    groups = {r.get("run_group") for r in records}
    assert len(groups) == 1 and None not in groups
    assert all(r["job_type"] == "train" for r in records)
    names = sorted(r["display_name"] for r in records)
    assert "optimizer.delta=0.01" in names[0] and "optimizer.delta=0.02" in names[1]
    assert all("seed" not in n for n in names)


@pytest.mark.parametrize(
    "override, key",
    [
        ("optimizer.delta=-0.01", "optimizer.delta"),
        ("optimizer.backtrack_coeff=1.5", "optimizer.backtrack_coeff"),
        ("optimizer.delta=abc", "optimizer.delta"),
        ("optimizer.natural_lr=0", "optimizer.natural_lr"),
        ("env.id=NoSuchEnv-v0", "env.id"),
        ("policy.distribution=laplace", "policy.distribution"),
        ("policy.final_log_std=abc", "policy.final_log_std"),
        ("env=cartpole policy.final_log_std=-1.0", "policy.final_log_std"),  # no Gaussian to schedule
    ],
)
def test_bad_value_is_refused_with_one_line(tmp_path: Path, override: str, key: str) -> None:
    """A bad value (or pair of values) exits with status 2 and one line naming the key, no traceback, no W&B run."""
    run_dir = tmp_path / "run"
    assert_one_line_refusal(launch([*override.split(), f"hydra.run.dir={run_dir}"]), key)
    assert not (run_dir / "wandb").exists()
    assert not (run_dir / "progress.csv").exists()


def learn_for_30k_steps(tmp_path: Path, *overrides: str) -> tuple[float, float, float]:
    """Train 15 epochs of 2,000 steps over 4 envs; the first and last epochs' AverageEpRet and the final EvalEpRet."""
    cfg = compose_config(
        [*overrides, "logger.mode=disabled", "epochs=15", "steps_per_epoch=2000", "sampler.num_envs=4"]
    )
    final_eval = Runner(cfg, RunIdentity(tmp_path)).run()
    rows = read_rows(tmp_path)
    return float(rows[0]["AverageEpRet"]), float(rows[-1]["AverageEpRet"]), final_eval


def test_trpo_learns_cartpole(tmp_path: Path) -> None:
    """TRPO at its defaults measurably learns CartPole within 30k steps: returns far above a random policy's ~22."""
    first, last, final_eval = learn_for_30k_steps(tmp_path, "env=cartpole")
    assert first < 40
    assert last > 3 * first
    assert final_eval > 150


@pytest.mark.parametrize("distribution", ["gaussian", "beta"])
def test_trpo_learns_inverted_pendulum_with_either_box_policy(tmp_path: Path, distribution: str) -> None:
    """With a Gaussian or a Beta policy, TRPO measurably learns InvertedPendulum within 30k steps: a random policy
    balances ~6 steps."""
    first, last, final_eval = learn_for_30k_steps(
        tmp_path, "env=inverted_pendulum", f"policy.distribution={distribution}"
    )
    assert first < 15
    assert last > 5 * first
    assert final_eval > 100


def test_a_scheduled_log_std_is_set_before_each_epochs_sampling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """policy.final_log_std=-1.5 over 4 epochs: epoch e samples with log-std -0.5 - e/4, so the last (e = 3), whose
    policy the checkpoint keeps, -1.25; every step stays inside the trust region."""
    sampled_with = []
    collect = Sampler.collect

    def recording_collect(sampler: Sampler, buffer):
        sampled_with.append(sampler.policy.log_std.tolist())
        return collect(sampler, buffer)

    monkeypatch.setattr(Sampler, "collect", recording_collect)
    cfg = compose_config(["env=pendulum", "logger.mode=disabled", *TINY, "epochs=4", "policy.final_log_std=-1.5"])
    Runner(cfg, RunIdentity(tmp_path)).run()
    assert sampled_with == [pytest.approx([-0.5 - epoch / 4]) for epoch in range(4)]
    log_std = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["policy"]["log_std"]
    assert log_std.tolist() == pytest.approx([-1.25])
    assert all(0 < float(row["KL"]) <= cfg.optimizer.delta for row in read_rows(tmp_path))


@pytest.mark.parametrize("override", ["optimizer=trpoo", "env=halfcheeta", "experiment=colapse"])
def test_unknown_group_option_is_refused_with_one_line(tmp_path: Path, override: str) -> None:
    """A misspelt config group option exits 2 with one line listing the options, before Hydra makes a run dir."""
    run_dir = tmp_path / "run"
    line = assert_one_line_refusal(launch([override, f"hydra.run.dir={run_dir}"]), "must be one of")
    assert line.startswith(f"error: {override.split('=')[0]}=")
    assert not run_dir.exists()


@pytest.mark.parametrize("natural_lr", [None, 1e-4])
def test_natural_lr_logs_how_much_of_the_trust_region_each_step_used(
    tiny_cartpole_cfg: DictConfig, tmp_path: Path, natural_lr: float | None
) -> None:
    """Without natural_lr every step reaches the KL limit (StepScale 1, KL of the order of delta); a tiny
    natural_lr takes the natural-gradient step eta H^-1 g instead, far inside it (StepScale < 0.1, KL < 1% of
    delta)."""
    tiny_cartpole_cfg.optimizer.natural_lr = natural_lr
    Runner(tiny_cartpole_cfg, RunIdentity(tmp_path)).run()
    rows = read_rows(tmp_path)
    delta = tiny_cartpole_cfg.optimizer.delta
    scales, kls = [float(r["StepScale"]) for r in rows], [float(r["KL"]) for r in rows]
    if natural_lr is None:
        assert scales == pytest.approx([1.0] * len(rows), rel=1e-6)
        assert all(0.1 * delta < kl <= delta for kl in kls)
    else:
        assert all(0 < scale < 0.1 for scale in scales)
        assert all(kl < 0.01 * delta for kl in kls)


def test_progress_prints_plain_lines_off_a_terminal(capsys: pytest.CaptureFixture) -> None:
    """Off a terminal (sweeps, CI logs) each epoch is one plain line with steps, return and KL; no bar."""
    from trpo.runner import Progress

    progress = Progress(total_steps=800)
    progress.log({"Epoch": 0, "TotalEnvInteracts": 400, "AverageEpRet": 12.5, "KL": 0.0091, "Time": 1.0})
    progress.close()
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    assert "epoch    0" in out[0] and "400" in out[0] and "12.50" in out[0] and "0.0091" in out[0]
