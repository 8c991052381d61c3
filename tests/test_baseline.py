"""`python -m trpo.baseline`: sb3-contrib's TRPO at rl-zoo's settings, written as run dirs the reports read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trpo import baseline
from trpo.baseline import is_finished, main, settings_for, train_or_record_error
from trpo.compare import read_run

# rl-baselines3-zoo's hyperparams/trpo.yml, "mujoco-defaults" (from its "pybullet-defaults"), copied by hand.
ZOO_MUJOCO = {
    "n_envs": 2, "normalize": True, "n_steps": 1024, "batch_size": 128, "gamma": 0.99, "gae_lambda": 0.95,
    "sub_sampling_factor": 1, "cg_max_steps": 25, "cg_damping": 0.1, "n_critic_updates": 20, "learning_rate": 1e-3,
    "target_kl": 0.01,  # not in the file: sb3-contrib's default
}


def test_zoo_settings_are_the_mujoco_defaults_with_halfcheetah_s_kl_limit() -> None:
    assert settings_for("walker2d") == ZOO_MUJOCO
    assert settings_for("hopper") == ZOO_MUJOCO
    assert settings_for("halfcheetah") == {**ZOO_MUJOCO, "target_kl": 0.04}


def test_a_failed_run_leaves_its_error_and_the_others_go_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(task: str, seed: int, out_dir: Path, epochs: int) -> dict:
        raise RuntimeError("simulator exploded")

    monkeypatch.setattr(baseline, "train_and_evaluate", broken)
    summary = train_or_record_error("hopper", 3, tmp_path, 488)

    assert summary == {"task": "hopper", "seed": 3, "error": "RuntimeError: simulator exploded"}
    assert read_run(tmp_path / "hopper" / "3").status == "failed: RuntimeError: simulator exploded"
    assert not is_finished("hopper", 3, tmp_path, 488)


def test_a_short_run_is_a_finished_run_dir_and_is_not_trained_again(tmp_path: Path) -> None:
    pytest.importorskip("sb3_contrib", reason="sb3-contrib is installed by make install-bench")
    args = ["--tasks", "walker2d", "--seeds", "7", "--epochs", "2", "--jobs", "1", "--out-dir", str(tmp_path)]
    assert main(args) == 0

    run = read_run(tmp_path / "walker2d" / "7")
    assert run.config["env.id"] == "Walker2d-v5" and run.seed == 7 and run.config["sb3.n_critic_updates"] == 20
    np.testing.assert_array_equal(run.steps, [2048, 4096])
    assert run.status == "finished" and np.isfinite(run.eval_return)
    assert np.isfinite(run.returns).any()  # Walker2d's early episodes are short: some end in every rollout
    assert is_finished("walker2d", 7, tmp_path, 2)
    assert not is_finished("walker2d", 7, tmp_path, 3)  # a run of another length is trained again
    written = (tmp_path / "walker2d" / "7" / "progress.csv").stat().st_mtime_ns

    main(args)

    assert (tmp_path / "walker2d" / "7" / "progress.csv").stat().st_mtime_ns == written
