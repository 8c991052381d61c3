"""Sweeps at scale: the launchers (joblib, submitit, Ray), the Optuna search and the sweep's failure summary.

Each end-to-end test runs the real command, ``launch.py -m ...``, as a user would. Jobs are tiny CartPole runs
that step their envs in-process (``sampler.workers=0``), as parallel sweeps should.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from tests.conftest import TINY, compose_config, inspect_wandb, launch, read_rows, wandb_runs
from trpo.sweep_callbacks import SweepSummary, format_summary, scan_sweep

SWEEP_TINY = ["env=cartpole", *TINY, "sampler.workers=0", "sampler.num_envs=1"]


def run_sweep(tmp_path: Path, *args: str) -> tuple:
    sweep_dir = tmp_path / "sweep"
    # A generous limit: a launcher's start-up (Ray starts a dozen processes) takes minutes on a loaded machine.
    result = launch(["-m", *args, *SWEEP_TINY, f"hydra.sweep.dir={sweep_dir}"], timeout=600)
    return result, sweep_dir


def assert_jobs_trained(sweep_dir: Path, jobs: list[str]) -> list[dict]:
    """Every job wrote 2 epochs to progress.csv and one W&B run; all the runs share one group."""
    runs = []
    for job in jobs:
        rows = read_rows(sweep_dir / job)
        assert len(rows) == 2, job
        assert math.isfinite(float(rows[-1]["EvalEpRet"]))
        [wandb_file] = wandb_runs(sweep_dir / job)
        [run] = [r["run"] for r in inspect_wandb(wandb_file, summary=False) if r["type"] == "run"]
        runs.append(run)
    groups = {r.get("run_group") for r in runs}
    assert groups == {f"sweep-{sweep_dir.name}"}, groups
    return runs


# -- the configs a user edits -----------------------------------------------------------------------------------


def test_launcher_configs_compose_with_documented_fields() -> None:
    """hydra/launcher=parallel | slurm | ray_cluster select the plugins, with the fields the README names."""
    parallel = compose_config(["hydra/launcher=parallel"], return_hydra_config=True).hydra.launcher
    assert parallel._target_.endswith("JoblibLauncher") and parallel.n_jobs == -1

    slurm_overrides = ["hydra/launcher=slurm", "hydra.launcher.partition=cpu"]
    slurm = compose_config(slurm_overrides, return_hydra_config=True).hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher")
    assert slurm.partition == "cpu" and slurm.timeout_min == 120 and slurm.cpus_per_task == 2 and slurm.mem_gb == 4
    assert slurm.setup == []

    ray = compose_config(["hydra/launcher=ray_cluster"], return_hydra_config=True).hydra.launcher
    assert ray._target_.endswith("RayLauncher")
    assert ray.ray.init.address is None and ray.ray.init.object_store_memory is None
    assert ray.ray.remote.num_cpus == 1


def test_slurm_config_renders_a_valid_sbatch_script(tmp_path: Path, monkeypatch) -> None:
    """submitit accepts every field of hydra/launcher=slurm and writes them into the sbatch script (no cluster
    needed: submitit only looks for an `srun` on PATH). The executor is built as the plugin's launch() builds it."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")

    setup = "hydra.launcher.setup=['source .venv/bin/activate']"
    cfg = compose_config(
        ["hydra/launcher=slurm", "hydra.launcher.partition=cpu", setup, f"hydra.sweep.dir={tmp_path}"],
        return_hydra_config=True,
    )
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    params.pop("_target_")
    executor = submitit.AutoExecutor(
        cluster="slurm", folder=params.pop("submitit_folder"), slurm_max_num_timeout=params.pop("max_num_timeout")
    )
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    script = executor._executor._make_submission_file_text("python -u -m submitit.core._submit X", "uid")
    for line in ("--partition=cpu", "--time=120", "--cpus-per-task=2", "--mem=4GB", "source .venv/bin/activate"):
        assert line in script, line


def test_optuna_search_config_searches_existing_trpo_keys() -> None:
    """+hparams_search=trpo_optuna maximises with Optuna over keys that exist in the TRPO config."""
    cfg = compose_config(["+hparams_search=trpo_optuna"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert sweeper.direction == "maximize" and sweeper.n_trials > 0
    assert set(sweeper.params) >= {"optimizer.delta", "optimizer.lam", "optimizer.damping_coeff", "optimizer.cg_iters"}
    for key in sweeper.params:
        assert OmegaConf.select(cfg, key) is not None, key


def test_sweep_summary_callback_is_registered() -> None:
    callbacks = compose_config([], return_hydra_config=True).hydra.callbacks
    assert callbacks.sweep_summary._target_ == "trpo.sweep_callbacks.SweepSummary"


# -- the failure summary, on its own ----------------------------------------------------------------------------


def fake_job(sweep_dir: Path, num: int, overrides: list[str]) -> Path:
    job_dir = sweep_dir / str(num)
    (job_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(overrides), job_dir / ".hydra" / "overrides.yaml")
    return job_dir


def job_config(job_dir: Path, num: int):
    return OmegaConf.create({"hydra": {"runtime": {"output_dir": str(job_dir)}, "job": {"num": num}}})


def test_callback_names_failed_jobs_and_exits_nonzero(tmp_path: Path, capsys) -> None:
    """on_job_end records each job on disk; on_multirun_end names the failed one and exits with status 1."""
    sweep_dir = tmp_path / "sweep"
    callback = SweepSummary()
    callback.on_multirun_start(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}}))
    try:
        fixed = ["env=cartpole", "epochs=2"]
        good = fake_job(sweep_dir, 0, ["optimizer.delta=0.01", *fixed])
        bad = fake_job(sweep_dir, 1, ["optimizer.delta=0.02", *fixed])
        callback.on_job_end(
            job_config(good, 0),
            JobReturn(overrides=["optimizer.delta=0.01", *fixed], status=JobStatus.COMPLETED, _return_value=42.0),
        )
        crash = RuntimeError("simulated crash\nsecond line")
        callback.on_job_end(
            job_config(bad, 1),
            JobReturn(overrides=["optimizer.delta=0.02", *fixed], status=JobStatus.FAILED, _return_value=crash),
        )
        assert (bad / "error.txt").read_text().startswith("RuntimeError: simulated crash")
        assert not (good / "error.txt").exists()

        with pytest.raises(SystemExit) as exit_info:
            callback.on_multirun_end(OmegaConf.create({}))
        assert exit_info.value.code == 1
    finally:
        callback._reported = True  # the atexit hook (unregistered by on_multirun_end) must stay quiet

    err = capsys.readouterr().err
    assert "2 jobs, 1 completed, 1 failed" in err
    assert "FAILED job #1: optimizer.delta=0.02\n" in err  # only the overrides that set this job apart
    assert "RuntimeError: simulated crash" in err and "second line" not in err


def test_scan_ignores_files_left_by_an_earlier_sweep(tmp_path: Path) -> None:
    """A job dir or error.txt older than the sweep (the same sweep dir used twice) is not this sweep's."""
    sweep_dir = tmp_path / "sweep"
    old = fake_job(sweep_dir, 0, ["optimizer.delta=-1"])
    (old / "error.txt").write_text("optimizer.delta=-1 is not allowed: must be > 0\n")
    long_ago = time.time() - 3600
    for path in (old / "error.txt", old / ".hydra" / "overrides.yaml"):
        os.utime(path, (long_ago, long_ago))
    new = fake_job(sweep_dir, 1, ["optimizer.delta=0.01"])
    (new / "error.txt").write_text("run failed: ValueError: boom\n")

    records = scan_sweep(sweep_dir, since=time.time() - 60)
    assert [(r.num, r.status, r.error) for r in records] == [(None, "FAILED", "run failed: ValueError: boom")]
    assert "1 jobs, 0 completed, 1 failed" in format_summary(sweep_dir, records)


def test_the_summary_shows_paths_as_typed_below_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    sweep_dir = tmp_path / "outputs" / "sweeps" / "s"
    (fake_job(sweep_dir, 1, ["optimizer.delta=-1"]) / "error.txt").write_text("optimizer.delta=-1 is not allowed\n")
    monkeypatch.chdir(tmp_path)
    summary = format_summary(sweep_dir, scan_sweep(sweep_dir))
    assert "failed  (outputs/sweeps/s)" in summary and "[outputs/sweeps/s/1]" in summary


# -- the real command, with each launcher -----------------------------------------------------------------------


def test_failed_job_is_named_and_fails_the_sweep(tmp_path: Path) -> None:
    """One bad value: the good job still trains, the bad job leaves only error.txt, the sweep exits non-zero and
    its summary names the failed job."""
    result, sweep_dir = run_sweep(tmp_path, "optimizer.delta=0.01,-1")
    assert result.returncode != 0
    assert_jobs_trained(sweep_dir, ["0"])

    bad = sweep_dir / "1"
    assert (bad / "error.txt").read_text().startswith("optimizer.delta=-1 is not allowed")
    assert not (bad / "wandb").exists() and not (bad / "progress.csv").exists()
    summary = result.stderr[result.stderr.index("Sweep summary") :]
    assert "2 jobs, 1 completed, 1 failed" in summary
    assert "FAILED job #1: optimizer.delta=-1" in summary
    assert "optimizer.delta=-1 is not allowed: must be > 0" in summary

    # The same sweep dir relaunched with another delta: job 0's trained run refuses it and stays as it was trained
    # (its Hydra files put back, no error.txt), while the summary still names the refusal.
    trained = {name: (sweep_dir / "0" / ".hydra" / name).read_bytes() for name in ("config.yaml", "overrides.yaml")}
    again = launch(["-m", "optimizer.delta=0.02,-1", *SWEEP_TINY, f"hydra.sweep.dir={sweep_dir}"], timeout=600)
    assert again.returncode != 0
    assert {name: (sweep_dir / "0" / ".hydra" / name).read_bytes() for name in trained} == trained
    assert not (sweep_dir / "0" / "error.txt").exists()
    assert "FAILED job #0: optimizer.delta=0.02" in again.stderr and "another run dir" in again.stderr


@pytest.mark.slow
def test_failed_job_in_a_parallel_sweep(tmp_path: Path) -> None:
    """With joblib the job fails in a worker process: the summary still names it, the other job still trains."""
    result, sweep_dir = run_sweep(
        tmp_path, "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "optimizer.delta=-1,0.01"
    )
    assert result.returncode != 0
    assert_jobs_trained(sweep_dir, ["1"])
    assert (sweep_dir / "0" / "error.txt").exists() and not (sweep_dir / "0" / "wandb").exists()
    assert "FAILED job #0: optimizer.delta=-1" in result.stderr


@pytest.mark.slow
def test_joblib_runs_two_jobs_at_once(tmp_path: Path) -> None:
    result, sweep_dir = run_sweep(
        tmp_path, "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "optimizer.delta=0.01,0.02"
    )
    assert result.returncode == 0, result.stderr
    assert "Joblib.Parallel(n_jobs=2" in result.stdout
    assert_jobs_trained(sweep_dir, ["0", "1"])
    assert "2 jobs, 2 completed, 0 failed" in result.stdout


@pytest.mark.slow
def test_submitit_local_runs_the_jobs(tmp_path: Path) -> None:
    result, sweep_dir = run_sweep(tmp_path, "hydra/launcher=submitit_local", "optimizer.delta=0.01,0.02")
    assert result.returncode == 0, result.stderr
    assert_jobs_trained(sweep_dir, ["0", "1"])
    assert (sweep_dir / ".submitit").is_dir()


@pytest.mark.slow
def test_ray_runs_the_jobs_on_a_local_instance(tmp_path: Path) -> None:
    """address=local starts a fresh Ray instance for the sweep (never joins someone else's) with 2 CPUs."""
    result, sweep_dir = run_sweep(
        tmp_path,
        "hydra/launcher=ray_cluster",
        "hydra.launcher.ray.init.address=local",
        "hydra.launcher.ray.init.num_cpus=2",
        "optimizer.delta=0.01,0.02",
    )
    assert result.returncode == 0, result.stderr
    assert "Started a local Ray instance" in result.stdout + result.stderr
    assert_jobs_trained(sweep_dir, ["0", "1"])


@pytest.mark.slow
def test_optuna_search_maximises_eval_return(tmp_path: Path) -> None:
    """Two Optuna trials over delta in [0.005, 0.05]: optimization_results.yaml holds the best trial's EvalEpRet."""
    result, sweep_dir = run_sweep(
        tmp_path, "+hparams_search=trpo_optuna", "hydra.sweeper.n_trials=2", "optimizer.delta=interval(0.005,0.05)"
    )
    assert result.returncode == 0, result.stderr
    assert_jobs_trained(sweep_dir, ["0", "1"])

    returns, deltas = [], []
    for job in ("0", "1"):
        returns.append(float(read_rows(sweep_dir / job)[-1]["EvalEpRet"]))
        overrides = OmegaConf.load(sweep_dir / job / ".hydra" / "overrides.yaml")
        [delta] = [float(o.split("=", 1)[1]) for o in overrides if o.startswith("optimizer.delta=")]
        deltas.append(delta)
    assert all(0.005 <= d <= 0.05 for d in deltas), deltas

    best = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert best.name == "optuna"
    assert best.best_value == pytest.approx(max(returns))
    assert best.best_params["optimizer.delta"] == pytest.approx(deltas[returns.index(max(returns))])


@pytest.mark.slow
def test_optuna_tolerated_failure_still_fails_the_sweep(tmp_path: Path) -> None:
    """Within max_failure_rate Optuna marks the trial failed and finishes the study; the summary (run at the end
    of the multirun this time) still names the failed trial and fails the sweep."""
    result, sweep_dir = run_sweep(
        tmp_path,
        "hydra/sweeper=optuna",
        "hydra/sweeper/sampler=random",
        "hydra.sweeper.sampler.seed=0",  # with this seed the two trials draw 0.01, then -1
        "hydra.sweeper.direction=maximize",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.max_failure_rate=0.5",
        "optimizer.delta=choice(-1,0.01)",
    )
    assert result.returncode == 1
    assert_jobs_trained(sweep_dir, ["0"])
    assert (sweep_dir / "1" / "error.txt").exists()
    assert OmegaConf.load(sweep_dir / "optimization_results.yaml").best_params["optimizer.delta"] == 0.01
    assert "FAILED job #1: optimizer.delta=-1" in result.stderr
