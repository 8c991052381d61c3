"""`python -m trpo.compare`: run discovery, grouping by differing config, mean/std over seeds, and its outputs.

Most tests build fake run dirs by hand (progress.csv + .hydra/), so the expected numbers can be worked out
on paper; the last one compares a real tiny sweep made by launch.py.
"""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest
import yaml

from tests.conftest import ROOT, TINY, launch
from trpo.compare import (
    differing_keys,
    find_run_dirs,
    flatten,
    group_curve,
    group_runs,
    main,
    read_run,
)

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
) -> Path:
    """A run dir as launch.py leaves it: BASE_CONFIG with ``config``'s dotted keys set, one row per return."""
    full = yaml.safe_load(yaml.safe_dump(BASE_CONFIG))  # a deep copy
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
            writer = csv.DictWriter(f, ["Epoch", "AverageEpRet", "TotalEnvInteracts", "KL", "EvalEpRet"])
            writer.writeheader()
            for epoch, ret in enumerate(returns):
                last = epoch == len(returns) - 1
                writer.writerow({
                    "Epoch": epoch,
                    "AverageEpRet": "nan" if math.isnan(ret) else ret,
                    "TotalEnvInteracts": (epoch + 1) * steps_per_epoch,
                    "KL": 0.01,
                    "EvalEpRet": eval_return if (last and eval_return is not None) else "",
                })
    if error is not None:
        (run_dir / "error.txt").write_text(error)
    return run_dir


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """Two deltas x two seeds, all finished, with numbers easy to average by hand."""
    root = tmp_path / "sweep"
    write_run(root / "0", [10, 20, 30], eval_return=100, config={"optimizer.delta": 0.01, "seed": 0})
    write_run(root / "1", [14, 24, 34], eval_return=110, config={"optimizer.delta": 0.01, "seed": 1})
    write_run(root / "2", [0, 40, 80], eval_return=200, config={"optimizer.delta": 0.05, "seed": 0})
    write_run(root / "3", [4, 60, 90], eval_return=300, config={"optimizer.delta": 0.05, "seed": 1})
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def test_flatten_and_differing_keys_pool_seed_and_ignore_logger() -> None:
    a = flatten({"seed": 0, "optimizer": {"delta": 0.01}, "logger": {"mode": "offline"}, "h": [64, 64]})
    b = flatten({"seed": 1, "optimizer": {"delta": 0.05}, "logger": {"mode": "disabled"}, "h": [64, 64]})
    assert a == {"seed": 0, "optimizer.delta": 0.01, "logger.mode": "offline", "h": (64, 64)}
    assert differing_keys([a, b]) == ["optimizer.delta"]


def test_groups_and_mean_std_against_hand_computed_numbers(sweep: Path, capsys: pytest.CaptureFixture) -> None:
    runs = [read_run(p) for p in find_run_dirs(sweep)]
    groups = group_runs(runs)
    assert [g.label for g in groups] == ["optimizer.delta=0.01", "optimizer.delta=0.05"]
    assert [[r.seed for r in g.runs] for g in groups] == [[0, 1], [0, 1]]

    curve = group_curve(groups[1].runs)
    np.testing.assert_allclose(curve.steps, [100, 200, 300])
    np.testing.assert_allclose(curve.mean, [2, 50, 85])  # (0+4)/2, (40+60)/2, (80+90)/2
    np.testing.assert_allclose(curve.std, [2, 10, 5])  # population std of two values: |a-b|/2

    assert main([str(sweep)]) == 0
    out = capsys.readouterr().out
    # delta=0.01: EvalEpRet 100, 110 -> 105 +- 5; final AverageEpRet 30, 34 -> 32 +- 2
    assert "| optimizer.delta=0.01 | 2 | 0, 1 | 105.00 ± 5.00 | 32.00 ± 2.00 | 300 | 2 finished |" in out
    # delta=0.05: EvalEpRet 200, 300 -> 250 +- 50; final AverageEpRet 80, 90 -> 85 +- 5
    assert "| optimizer.delta=0.05 | 2 | 0, 1 | 250.00 ± 50.00 | 85.00 ± 5.00 | 300 | 2 finished |" in out


def test_unequal_lengths_cut_at_steps_all_runs_reached(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A run still going (2 of 3 epochs) limits the group's curve and final numbers to 200 steps."""
    write_run(tmp_path / "a", [10, 20, 30], eval_return=50, config={"seed": 0})
    write_run(tmp_path / "b", [30, 40], config={"seed": 1})
    runs = [read_run(p) for p in find_run_dirs(tmp_path)]
    [group] = group_runs(runs)
    assert group.label == "all runs"
    curve = group_curve(group.runs)
    np.testing.assert_allclose(curve.steps, [100, 200])
    np.testing.assert_allclose(curve.mean, [20, 30])
    np.testing.assert_allclose(curve.std, [10, 10])

    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    # final AverageEpRet at 200 steps: 20 and 40; EvalEpRet only from the finished run
    row = "| all runs | 2 | 0, 1 | 50.00 ± 0.00 (n=1) | 30.00 ± 10.00 | 200 (max 300) | 1 finished, 1 incomplete |"
    assert row in out
    assert "running or incomplete (2/3 epochs)" in out


def test_run_dir_reused_keeps_only_the_latest_run(tmp_path: Path) -> None:
    """launch.py appends to progress.csv; when the steps start over, the old run's rows are dropped."""
    write_run(tmp_path / "a", [10, 20, 30], eval_return=50)
    with open(tmp_path / "a" / "progress.csv", "a") as f:
        f.write("0,7,100,0.01,\n")
    run = read_run(tmp_path / "a")
    np.testing.assert_allclose(run.steps, [100])
    np.testing.assert_allclose(run.returns, [7])
    assert run.status == "running or incomplete (1/3 epochs)"


def test_nan_returns_leave_gaps_not_errors(tmp_path: Path) -> None:
    """Epochs where no episode finished (NaN) drop out of that step's mean; all-NaN steps stay NaN."""
    write_run(tmp_path / "a", [math.nan, math.nan, 30], eval_return=1, config={"seed": 0})
    write_run(tmp_path / "b", [math.nan, 20, 50], eval_return=1, config={"seed": 1})
    runs = [read_run(p) for p in find_run_dirs(tmp_path)]
    curve = group_curve(group_runs(runs)[0].runs)
    assert math.isnan(curve.mean[0])
    np.testing.assert_allclose(curve.mean[1:], [20, 40])
    np.testing.assert_allclose(curve.std[1:], [0, 10])
    assert main([str(tmp_path)]) == 0
    assert (tmp_path / "compare.png").stat().st_size > 0


def test_failed_run_is_listed_not_a_crash(sweep: Path, capsys: pytest.CaptureFixture) -> None:
    write_run(sweep / "4", [], progress=False, error="optimizer.delta=-0.1 is not allowed: must be > 0\nmore\n",
              config={"optimizer.delta": -0.1})
    assert main([str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "| optimizer.delta=-0.1 | 1 | 0 | – | – | – | 1 failed |" in out
    assert "failed: optimizer.delta=-0.1 is not allowed: must be > 0 |" in out
    assert "more" not in out
    assert "failed" in (sweep / "compare.md").read_text()


def test_dir_without_runs_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty" / "wandb").mkdir(parents=True)
    assert main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        f"error: no runs found under {tmp_path / 'empty'} (expected progress.csv files written by launch.py)"
    )
    assert not (tmp_path / "empty" / "compare.png").exists()
    assert main([str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nowhere'} is not a directory"


def test_writes_png_and_md_into_first_dir(sweep: Path, tmp_path: Path) -> None:
    import matplotlib.image

    other = tmp_path / "runs" / "single"
    write_run(other, [1, 2, 3], eval_return=5, config={"optimizer.delta": 0.02})
    assert main([str(sweep), str(tmp_path / "runs")]) == 0
    image = matplotlib.image.imread(sweep / "compare.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image.std() > 0  # not a blank canvas
    md = (sweep / "compare.md").read_text()
    assert md.startswith("# Comparison of 5 runs")
    assert "optimizer.delta=0.02" in md
    assert not (tmp_path / "runs" / "compare.png").exists()


def test_real_sweep_from_launch(tmp_path: Path) -> None:
    """A real two-seed sweep of launch.py, compared through the command line as a user would."""
    sweep_dir = tmp_path / "sweep"
    made = launch(["-m", "env=cartpole", "seed=0,1", *TINY, "logger.mode=disabled", f"hydra.sweep.dir={sweep_dir}"])
    assert made.returncode == 0, made.stderr
    result = subprocess.run(
        [sys.executable, "-m", "trpo.compare", str(sweep_dir)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "| all runs | 2 | 0, 1 |" in result.stdout
    assert "| 800 | 2 finished |" in result.stdout
    assert (sweep_dir / "compare.png").stat().st_size > 0
    assert (sweep_dir / "compare.md").is_file()
