"""`python -m trpo.compare`: run discovery, grouping by differing config, mean/std over seeds, and its outputs.

Most tests build fake run dirs by hand (progress.csv + .hydra/), so the expected numbers can be worked out
on paper; the last one compares a real tiny sweep made by launch.py.
"""

from __future__ import annotations

import math
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.conftest import BASE_CONFIG, ROOT, TINY, launch, write_run
from trpo.compare import (
    cpu_model,
    differing_keys,
    find_run_dirs,
    flatten,
    group_curve,
    group_labels,
    group_runs,
    main,
    make_figure,
    parse_args,
    read_run,
)


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


def test_runs_that_learned_alike_share_a_group(tmp_path: Path) -> None:
    """Keys that change only where the work runs or when it is evaluated, and a number written as 20 or 20.0,
    do not split runs; a value that changes learning does."""
    write_run(tmp_path / "0", [1, 2], config={"seed": 0, "overlap_value_fit": True, "optimizer.delta": 20})
    write_run(tmp_path / "1", [1, 2], config={"seed": 1, "overlap_value_fit": False, "optimizer.delta": 20.0,
                                             "eval": {"freq": 15}, "sampler": {"workers": 2}})
    write_run(tmp_path / "2", [1, 2], config={"seed": 0, "optimizer.delta": 0.02})
    groups = group_runs([read_run(p) for p in find_run_dirs(tmp_path)])
    assert [(g.label, [r.seed for r in g.runs]) for g in groups] == [
        ("optimizer.delta=0.02", [0]), ("optimizer.delta=20", [0, 1])
    ]


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


def test_eval_and_resume_jobs_are_not_runs(tmp_path: Path) -> None:
    """A task=eval job and a resume= job train nothing in their own dirs: even refused (with error.txt) they are not
    listed, while a refused training job is, as failed."""
    write_run(tmp_path / "trained", [1, 2], eval_return=3)
    write_run(tmp_path / "eval", [], progress=False, error="error: no checkpoint", config={"task": "eval"})
    write_run(tmp_path / "resume", [], progress=False, error="error: no run", config={"resume": "outputs/x"})
    write_run(tmp_path / "refused", [], progress=False, error="error: optimizer.delta=-1 is not allowed")
    assert [p.name for p in find_run_dirs(tmp_path)] == ["refused", "trained"]


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


def test_the_line_joins_the_epochs_that_ended_episodes(tmp_path: Path) -> None:
    """HalfCheetah at 16 envs x 128 steps ends its 1,000-step episodes once in ~8 epochs: every other epoch is NaN,
    and the line must still join the finite points (a line broken at each NaN draws nothing at all)."""
    import matplotlib.pyplot as plt

    write_run(tmp_path / "a", [math.nan, 10, math.nan, 30, math.nan], eval_return=1, config={"seed": 0})
    group = group_runs([read_run(tmp_path / "a")])[0]
    fig = make_figure([group])
    line = fig.axes[0].lines[0]
    np.testing.assert_array_equal(line.get_xdata(), [200, 400])
    np.testing.assert_array_equal(line.get_ydata(), [10, 30])
    plt.close(fig)


def test_runs_of_several_envs_get_a_column_each(tmp_path: Path) -> None:
    """Returns of different tasks share no scale: one column per env, titled by it, holding only its groups (in
    their colours), each with its own panels; the common title above them."""
    import matplotlib.pyplot as plt

    kl = {"KL": [0.01, 0.02]}
    write_run(tmp_path / "a", [1, 2], config={"seed": 0}, columns=kl)
    write_run(tmp_path / "b", [3, 4], config={"seed": 0, "optimizer.delta": 0.05}, columns=kl)
    write_run(tmp_path / "c", [500, 900], config={"seed": 0, "env.id": "Hopper-v5"}, columns=kl)
    groups = group_runs([read_run(p) for p in find_run_dirs(tmp_path)])
    fig = make_figure(groups, ["KL"])
    cartpole, hopper, cartpole_kl, hopper_kl = fig.axes
    assert [cartpole.get_title(), hopper.get_title()] == ["CartPole-v1", "Hopper-v5"]
    assert fig.get_suptitle() == "TRPO learning curves: mean ± std over seeds"
    hopper_index = next(i for i, g in enumerate(groups) if "Hopper-v5" in g.label)
    assert [line.get_color() for line in hopper.get_lines()] == [f"C{hopper_index}"]
    np.testing.assert_allclose(hopper.get_lines()[0].get_ydata(), [500, 900])
    assert len(cartpole.get_lines()) == 2 and len(cartpole.get_legend().get_texts()) == 2
    assert len([line for line in hopper_kl.get_lines() if line.get_linestyle() == "-"]) == 1
    assert len([line for line in cartpole_kl.get_lines() if line.get_linestyle() == "-"]) == 2
    plt.close(fig)


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


@pytest.fixture
def diagnostics(tmp_path: Path) -> Path:
    """Two deltas x two seeds with the update diagnostics of progress.csv, numbers easy to average by hand.

    delta=0.01 (TRPO-like, 3 epochs each): BacktrackIters, KLExceeded, SampleTime + UpdateTime; only seed 0
    logs SurrogateWorse. delta=0.05 (VPG-like: empty BacktrackIters/KLExceeded cells, 3 and 1 epochs): KL,
    and only the cumulative Time.
    """
    root = tmp_path / "diag"
    write_run(root / "0", [10, 20, 30], config={"optimizer.delta": 0.01, "seed": 0}, columns={
        "BacktrackIters": [0, 3, 0], "KLExceeded": [0, 1, 1], "SurrogateWorse": [1, 0, 0],
        "SampleTime": [1, 1, 1], "UpdateTime": [1, 1, 1]})
    write_run(root / "1", [14, 24, 34], config={"optimizer.delta": 0.01, "seed": 1}, columns={
        "BacktrackIters": [0, 0, 0], "KLExceeded": [0, 0, 1],
        "SampleTime": [2, 2, 2], "UpdateTime": [2, 2, 2]})
    write_run(root / "2", [0, 40, 80], config={"optimizer.delta": 0.05, "seed": 0}, columns={
        "KL": [0.02, 0.02, 0.02], "BacktrackIters": [None] * 3, "KLExceeded": [None] * 3, "Time": [1, 3, 6]})
    write_run(root / "3", [4], config={"optimizer.delta": 0.05, "seed": 1}, columns={
        "KL": [0.08], "BacktrackIters": [None], "KLExceeded": [None], "Time": [4]})
    return root


def test_metrics_columns_against_hand_computed_numbers(diagnostics: Path, capsys: pytest.CaptureFixture) -> None:
    args = [str(diagnostics), "--metrics", "KL,BacktrackIters,KLExceeded,SurrogateWorse,Time"]
    assert main(args) == 0
    out = capsys.readouterr().out
    header = ("| group | runs | seeds | final EvalEpRet | final AverageEpRet | steps reached | status | KL "
              "| BacktrackIters | backtracked % | KLExceeded % of epochs | SurrogateWorse % of epochs | s/epoch |")
    assert header in out
    # delta=0.01: KL 0.01 everywhere -> 0.01 +- 0. BacktrackIters: run means 1 and 0 -> 0.5 +- 0.5.
    # backtracked: 1 of 3 epochs and 0 of 3 -> 1/6 = 16.7 %, run shares 33.3 % and 0 % -> std 16.7.
    # KLExceeded: 2/3 and 1/3 -> 3 of 6 epochs = 50 %, std of 66.7 and 33.3 = 16.7.
    # SurrogateWorse: only seed 0 logged it, 1 of 3 epochs -> 33.3 +- 0 (n=1).
    # s/epoch: SampleTime + UpdateTime = 2 s and 4 s per epoch -> 3 +- 1.
    assert ("| optimizer.delta=0.01 | 2 | 0, 1 | – | 32.00 ± 2.00 | 300 | 2 incomplete | 0.01 ± 0 | 0.5 ± 0.5 "
            "| 16.7 ± 16.7 | 50.0 ± 16.7 | 33.3 ± 0.0 (n=1) | 3 ± 1 |") in out
    # delta=0.05: KL pools all 4 epochs, (3 * 0.02 + 0.08) / 4 = 0.035; run means 0.02 and 0.08 -> std 0.03.
    # No BacktrackIters/KLExceeded/SurrogateWorse values: n/a. s/epoch from the increments of the cumulative
    # Time: [1, 2, 3] and [4] -> (1 + 2 + 3 + 4) / 4 = 2.5; run means 2 and 4 -> std 1.
    assert ("| optimizer.delta=0.05 | 2 | 0, 1 | – | 2.00 ± 2.00 | 100 (max 300) | 2 incomplete | 0.035 ± 0.03 "
            "| n/a | n/a | n/a | n/a | 2.5 ± 1 |") in out
    assert "`n/a`: no run of the group logged the column" in (diagnostics / "compare.md").read_text()


def test_default_table_has_no_metric_columns(diagnostics: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(diagnostics)]) == 0
    out = capsys.readouterr().out
    assert "| group | runs | seeds | final EvalEpRet | final AverageEpRet | steps reached | status |\n" in out
    assert "n/a" not in out and "Metric columns" not in out


def test_unknown_metric_or_panel_exits_2(diagnostics: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(diagnostics), "--metrics", "KL,KLL"]) == 2
    assert capsys.readouterr().err.startswith("error: --metrics KLL: no such column in progress.csv (columns: ")
    assert main([str(diagnostics), "--panels", "Nope"]) == 2
    assert capsys.readouterr().err.startswith("error: --panels Nope: no such column")
    assert not (diagnostics / "compare.md").exists()


def test_panels_share_colours_and_show_delta(diagnostics: Path) -> None:
    """--panels KL: a KL panel under the returns, the group means as hand-computed, each group's delta dashed."""
    groups = group_runs([read_run(p) for p in find_run_dirs(diagnostics)])
    fig = make_figure(groups, ["KL", "BacktrackIters"], title="KL per update")
    returns_ax, kl_ax, backtrack_ax = fig.axes
    assert returns_ax.get_title() == "KL per update"
    default = make_figure(groups).axes[0].get_title()  # no optimizer._target_ in these configs: TRPO, as before
    assert default == "TRPO learning curves on CartPole-v1: mean ± std over seeds"
    assert kl_ax.get_ylabel() == "KL" and backtrack_ax.get_xlabel().startswith("environment steps")
    solid = [line for line in kl_ax.get_lines() if line.get_linestyle() == "-"]
    # delta=0.01: KL 0.01 at 100..300 steps; delta=0.05: cut at the 100 steps both runs reached, (0.02+0.08)/2
    np.testing.assert_allclose(solid[0].get_xydata(), [[100, 0.01], [200, 0.01], [300, 0.01]])
    np.testing.assert_allclose(solid[1].get_xydata(), [[100, 0.05]])
    colours = [line.get_color() for line in returns_ax.get_lines()]
    assert colours == [line.get_color() for line in solid] == ["C0", "C1"]
    dashed = [line for line in kl_ax.get_lines() if line.get_linestyle() == "--" and len(line.get_ydata())]
    assert [(line.get_ydata()[0], line.get_color()) for line in dashed] == [(0.01, "C0"), (0.05, "C1")]
    assert [t.get_text() for t in kl_ax.get_legend().get_texts()] == ["delta of each group"]
    # BacktrackIters [0, 3, 0] and [0, 0, 0] -> mean [0, 1.5, 0]; the delta=0.05 runs logged none: no line
    np.testing.assert_allclose([line.get_ydata() for line in backtrack_ax.get_lines()], [[0.0, 1.5, 0.0]])


def test_one_shared_delta_is_one_black_line(sweep: Path) -> None:
    """TRPO and NPG at delta=0.01 and a VPG run (no delta): one delta line, black, not one per group."""
    runs = [read_run(p) for p in find_run_dirs(sweep) if "delta=0.01" in (p / ".hydra" / "overrides.yaml").read_text()]
    npg = {**BASE_CONFIG["optimizer"], "_target_": "trpo.updates.NPG"}
    runs.append(read_run(write_run(sweep.parent / "npg", [1, 2, 3], optimizer=npg)))
    runs.append(read_run(write_run(sweep.parent / "vpg", [1, 2, 3], optimizer={"_target_": "trpo.updates.VPG"})))
    fig = make_figure(group_runs(runs), ["KL"])
    [dashed] = [line for line in fig.axes[1].get_lines() if line.get_linestyle() == "--"]
    assert dashed.get_ydata()[0] == 0.01 and dashed.get_color() == "black"
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == ["delta = 0.01"]
    assert fig.axes[0].get_title() == "Learning curves on CartPole-v1: mean ± std over seeds"  # 3 update rules
    title = make_figure(group_runs(runs[-2:-1]), []).axes[0].get_title()
    assert title == "NPG learning curves on CartPole-v1: mean ± std over seeds"


def test_name_out_dir_title_and_provenance(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import matplotlib.image

    out_dir = tmp_path / "docs" / "figures"
    argv = [str(sweep), "--panels", "KL", "--metrics", "KL", "--name", "delta_kl", "--out-dir", str(out_dir),
            "--title", "TRPO: KL per update"]
    assert parse_args(argv).title == "TRPO: KL per update"
    assert main(argv) == 0
    assert not (sweep / "compare.png").exists() and not (sweep / "compare.md").exists()
    assert f"wrote {out_dir / 'delta_kl.png'} and {out_dir / 'delta_kl.md'}" in capsys.readouterr().out
    image = matplotlib.image.imread(out_dir / "delta_kl.png")
    assert image.shape[:2] == (900, 960)  # 8 x (5 + 2.5) inches at 120 dpi: the return curve and one panel
    md = (out_dir / "delta_kl.md").read_text()
    assert md.startswith("# Comparison of 4 runs\n\nMade ")
    when_where = r"^Made (\d{4}-\d\d-\d\d \d\d:\d\d \S+) on (.+), (\d+)( of \d+)? logical CPUs( usable)?\.$"
    made = re.search(when_where, md, re.M)
    assert made, md[:300]
    assert cpu_model() in made.group(2) and int(made.group(3)) >= 1
    assert f"Command:\n\n```sh\npython -m trpo.compare {shlex.join(argv)}\n```" in md
    assert "'TRPO: KL per update'" in md  # quoted, so the command can be pasted as is
    assert "(the end of the group's curve in delta_kl.png)" in md.replace("\n", " ")
    with pytest.raises(SystemExit):
        parse_args([str(sweep), "--name", "docs/x"])


OPTIONS = {
    "trpo": {"_target_": "trpo.updates.TRPO", "delta": 0.01, "backtrack_iters": 10, "lam": 0.97},
    "npg": {"_target_": "trpo.updates.NPG", "delta": 0.01, "lam": 0.97},
    "vpg": {"_target_": "trpo.updates.VPG", "pi_lr": 3.0e-4, "train_pi_iters": 1, "lam": 0.97},
}


@pytest.fixture
def conf_dir(tmp_path: Path) -> Path:
    """A conf/optimizer/ with the three options' defaults (the repo's own may change; these don't)."""
    for name, option in OPTIONS.items():
        (tmp_path / "conf" / "optimizer").mkdir(parents=True, exist_ok=True)
        (tmp_path / "conf" / "optimizer" / f"{name}.yaml").write_text(yaml.safe_dump(option))
    return tmp_path / "conf"


def option(name: str, **changes: Any) -> dict[str, Any]:
    """A flattened config that chose ``optimizer=name``, with ``changes`` to the option's keys."""
    return flatten({**BASE_CONFIG, "optimizer": {**OPTIONS[name], **changes}})


def test_labels_name_the_update_rule_and_only_non_default_keys(conf_dir: Path) -> None:
    # pi_lr varies between the VPG runs, so it labels both; TRPO/NPG keys at their defaults are left out
    configs = [option("npg"), option("trpo"), option("vpg"), option("vpg", pi_lr=0.01)]
    assert group_labels(configs, conf_dir) == ["NPG", "TRPO", "VPG pi_lr=0.0003", "VPG pi_lr=0.01"]
    # a non-default value shared by all runs of an option is named; a key that differs only because the
    # options differ (TRPO's delta, VPG's pi_lr) is not
    assert group_labels([option("trpo"), option("vpg", pi_lr=0.01)], conf_dir) == ["TRPO", "VPG pi_lr=0.01"]
    assert group_labels([option("trpo", delta=0.05, lam=0.9), option("npg")], conf_dir) == [
        "TRPO delta=0.05 lam=0.9", "NPG"]
    # without the option's defaults file, a value shared by all of an option's runs counts as its own
    assert group_labels([option("trpo"), option("vpg", pi_lr=0.01)], conf_dir / "nowhere") == ["TRPO", "VPG"]
    # keys outside the optimizer follow as key=value
    hopper = {**option("vpg"), "env.id": "Hopper-v5"}
    assert group_labels([option("trpo"), hopper], conf_dir) == ["TRPO, env.id=CartPole-v1", "VPG, env.id=Hopper-v5"]
    # the same optimizer throughout: the plain key=value labels, as before
    assert group_labels([option("trpo"), option("trpo", delta=0.05)], conf_dir) == [
        "optimizer.delta=0.01", "optimizer.delta=0.05"]
    # two targets with the same class name would give one label twice: plain labels instead
    other = option("trpo", _target_="other.module.TRPO")
    labels = group_labels([option("trpo"), other], conf_dir)
    assert labels == ["optimizer._target_=trpo.updates.TRPO", "optimizer._target_=other.module.TRPO"]


def test_table_labels_for_optimizer_choice(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Runs of optimizer=trpo and optimizer=vpg through the command line, with the repo's conf/ defaults;
    VPG has no KLExceeded, so its cell is n/a."""
    from trpo.compare import CONF_DIR, option_defaults

    vpg = option_defaults(CONF_DIR / "optimizer")["trpo.updates.VPG"]
    trpo = option_defaults(CONF_DIR / "optimizer")["trpo.updates.TRPO"]
    write_run(tmp_path / "t0", [1, 2], optimizer=trpo, config={"seed": 0}, columns={"KLExceeded": [0, 1]})
    write_run(tmp_path / "t1", [1, 2], optimizer=trpo, config={"seed": 1}, columns={"KLExceeded": [0, 0]})
    write_run(tmp_path / "v0", [1, 2], optimizer={**vpg, "pi_lr": 0.0123}, columns={"KLExceeded": [None, None]})
    assert main([str(tmp_path), "--metrics", "KLExceeded"]) == 0
    out = capsys.readouterr().out
    assert "| TRPO | 2 | 0, 1 | – | 2.00 ± 0.00 | 200 | 2 incomplete | 25.0 ± 25.0 |" in out
    assert "| VPG pi_lr=0.0123 | 1 | 0 | – | 2.00 ± 0.00 | 200 | 1 incomplete | n/a |" in out


def preset_run(run_dir: Path, overrides: list[str], **config: Any) -> Path:
    """A run launched with ``overrides`` (as typed) whose composed config has the dotted keys ``config``."""
    write_run(run_dir, [1, 2, 3], eval_return=4, config=config)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    return run_dir


WALKER_PRESET = {"optimizer.delta": 0.01, "optimizer.lam": 0.97, "policy.distribution": "gaussian"}
GENERAL_PRESET = {"optimizer.delta": 0.05, "optimizer.lam": 0.95, "policy.distribution": "beta"}


def test_preset_runs_are_labelled_by_their_overrides(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Runs of two presets and of none: labelled by what was typed, in any order (experiment= first), less what
    every run shares (sampler.num_envs=8) and what never splits groups (seed, overlap_value_fit, logger.*,
    hydra.*); compare.md lists the differing config too."""
    common = ["sampler.num_envs=8", "overlap_value_fit=false", "logger.mode=disabled"]
    for seed in (0, 1):
        preset_run(tmp_path / f"w{seed}", [f"seed={seed}", "experiment=walker2d", *common,
                                          f"hydra.run.dir=w{seed}"], seed=seed, **WALKER_PRESET)
        general = ["env=walker2d", "experiment=mujoco"] if seed == 0 else ["experiment=mujoco", "env=walker2d"]
        preset_run(tmp_path / f"g{seed}", [f"seed={seed}", *general, *common], seed=seed, **GENERAL_PRESET)
    preset_run(tmp_path / "d0", ["seed=0", *common], seed=0)  # no preset, nothing else but what all share
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| no other overrides | 1 | 0 | 4.00 ± 0.00 |" in out
    assert "| experiment=mujoco env=walker2d | 2 | 0, 1 | 4.00 ± 0.00 |" in out
    assert "| experiment=walker2d | 2 | 0, 1 | 4.00 ± 0.00 |" in out
    assert ("| experiment=walker2d | optimizer.delta=0.01, optimizer.lam=0.97, policy.distribution=gaussian |"
            in (tmp_path / "compare.md").read_text())


@pytest.mark.parametrize(
    "case", ["overrides differ within a group", "no overrides.yaml", "no preset chosen", "every run of one preset"]
)
def test_preset_labels_fall_back_to_config_values(tmp_path: Path, case: str) -> None:
    """Where the overrides cannot label the groups (or no preset was chosen), the labels are the differing
    config values, as for any other runs."""
    walker, general = {
        "no preset chosen": (["optimizer.delta=0.01"], ["optimizer.delta=0.05"]),
        # a sweep within one preset: its labels are the swept values, as in any sweep
        "every run of one preset": (["experiment=x", "optimizer.delta=0.01"], ["experiment=x", "optimizer.delta=0.05"]),
    }.get(case, (["experiment=walker2d"], ["experiment=mujoco", "env=walker2d"]))
    preset_run(tmp_path / "w0", walker, seed=0, **WALKER_PRESET)
    preset_run(tmp_path / "g0", general, seed=0, **GENERAL_PRESET)
    if case == "overrides differ within a group":  # the same config, typed out instead of chosen by the preset
        preset_run(tmp_path / "w1", ["env=walker2d", "optimizer.lam=0.97"], seed=1, **WALKER_PRESET)
    if case == "no overrides.yaml":
        (tmp_path / "w0" / ".hydra" / "overrides.yaml").unlink()
    groups = group_runs([read_run(path) for path in sorted(tmp_path.iterdir())])
    assert [group.label for group in groups] == [
        "optimizer.delta=0.01, optimizer.lam=0.97, policy.distribution=gaussian",
        "optimizer.delta=0.05, optimizer.lam=0.95, policy.distribution=beta",
    ]
    assert all(group.config_label is None for group in groups)


def test_runs_without_configs_form_one_group(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for name in ("a", "b"):
        write_run(tmp_path / name, [1, 2, 3])
        shutil.rmtree(tmp_path / name / ".hydra")
    assert main([str(tmp_path)]) == 0
    assert "| (no .hydra/config.yaml) | 2 |" in capsys.readouterr().out


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
