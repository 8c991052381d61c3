"""`python -m trpo.baseline`: sb3-contrib's TRPO at rl-zoo's settings, written as run dirs the reports read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trpo.baseline import ZOO_SETTINGS, main, settings_for
from trpo.compare import read_run


def test_zoo_settings_are_the_mujoco_defaults_with_halfcheetah_s_kl_limit() -> None:
    assert settings_for("walker2d") == ZOO_SETTINGS
    assert settings_for("hopper")["target_kl"] == 0.01
    assert settings_for("halfcheetah") == {**ZOO_SETTINGS, "target_kl": 0.04}
    # 2 envs x 1,024 steps: the presets' 2,048-step epochs, so 488 of them stay under 1M env steps
    assert ZOO_SETTINGS["n_envs"] * ZOO_SETTINGS["n_steps"] == 2048


def test_a_short_run_is_a_finished_run_dir_and_is_not_trained_again(tmp_path: Path) -> None:
    pytest.importorskip("sb3_contrib", reason="sb3-contrib is installed by make install-bench")
    args = ["--tasks", "walker2d", "--seeds", "7", "--epochs", "2", "--jobs", "1", "--out-dir", str(tmp_path)]
    assert main(args) == 0

    run = read_run(tmp_path / "walker2d" / "7")
    assert run.config["env.id"] == "Walker2d-v5" and run.seed == 7 and run.config["sb3.n_critic_updates"] == 20
    np.testing.assert_array_equal(run.steps, [2048, 4096])
    assert run.status == "finished" and np.isfinite(run.eval_return)
    assert np.isfinite(run.returns).any()  # Walker2d's early episodes are short: some end in every rollout
    written = (tmp_path / "walker2d" / "7" / "progress.csv").stat().st_mtime_ns

    main(args)

    assert (tmp_path / "walker2d" / "7" / "progress.csv").stat().st_mtime_ns == written
