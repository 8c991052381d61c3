"""`python -m trpo.results`: docs/results.md from run dirs, its goal check and the general preset's table.

The run dirs are faked by hand (see tests/test_compare.py), so every expected cell can be worked out on paper.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from tests.conftest import write_run
from trpo.compare import read_run
from trpo.results import main


def write_task(results_dir: Path, task: str, env_id: str, evals: list[Optional[float]], first_seed: int = 0) -> None:
    """One finished run per ``evals`` entry (None: a run still training), seeds counted from ``first_seed``."""
    for seed, eval_return in enumerate(evals, start=first_seed):
        write_run(
            results_dir / task / str(seed),
            [100.0, 200.0, 300.0] if eval_return is not None else [100.0, 200.0],
            eval_return=eval_return,
            config={"seed": seed, "env.id": env_id},
        )


def table_row(text: str, first_cell: str) -> list[str]:
    """The cells of the first markdown table row whose first cell is ``first_cell``."""
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row for {first_cell!r} in:\n{text}")


def test_goal_needs_the_mean_and_every_seed_above_its_floor(tmp_path: Path) -> None:
    results = tmp_path / "results"
    write_task(results, "halfcheetah", "HalfCheetah-v5", [4500.0, 4400.0, 4600.0])  # mean exactly 4500: met
    write_task(results, "hopper", "Hopper-v5", [4500.0, 4500.0, 2700.0])  # mean 3900, but 2700 < 2800
    write_task(results, "walker2d", "Walker2d-v5", [5000.0, 4990.0, 5000.0])  # every seed above 4000, mean short
    out = tmp_path / "docs" / "results.md"

    assert main(["--results-dir", str(results), "--out", str(out)]) == 0

    text = out.read_text()
    assert table_row(text, "HalfCheetah-v5") == [
        "HalfCheetah-v5", "4500 / 4400 / 4600", "4500 ± 82", "300", "4500 (no seed < 3600)", "yes", "n/a"
    ]
    assert table_row(text, "Hopper-v5")[1:3] == ["4500 / 4500 / 2700", "3900 ± 849"]
    assert table_row(text, "Hopper-v5")[-2] == "no"
    assert table_row(text, "Walker2d-v5")[-2] == "no"
    for task in ("halfcheetah", "hopper", "walker2d"):
        assert (out.parent / "figures" / f"results-{task}.png").stat().st_size > 0
        assert f"figures/results-{task}.png" in text
    assert "general preset" not in text  # no runs under results/general: no table
    assert "not chosen on" not in text  # nor under results/heldout
    assert "logger.mode=disabled hydra.sweep.dir" in text  # not evaluated during training: no eval.freq
    assert f"by `python -m trpo.results --results-dir {results} --out {out}`," in text  # main's own arguments


def test_heldout_table_applies_the_goal_to_the_other_seeds(tmp_path: Path) -> None:
    results = tmp_path / "results"
    write_task(results, "walker2d", "Walker2d-v5", [5372.0, 4612.0, 4715.0])
    heldout = results / "heldout"
    write_task(heldout, "walker2d", "Walker2d-v5", [5100.0, 5300.0, 4100.0], first_seed=3)  # mean 4833 < 5000
    write_task(heldout, "halfcheetah", "HalfCheetah-v5", [4600.0, 4500.0, 4700.0], first_seed=3)  # met
    write_task(heldout, "hopper", "Hopper-v5", [3600.0, None], first_seed=3)  # one still training: not met
    out = tmp_path / "results.md"

    main(["--results-dir", str(results), "--out", str(out)])

    text = out.read_text()
    section = text.split("## The presets on seeds they were not chosen on")[1].split("## ")[0]
    assert table_row(section, "Walker2d-v5") == [
        "Walker2d-v5", "3, 4, 5", "5100 / 5300 / 4100", "4833 ± 525", "300", "5000 (no seed < 4000)", "no", "n/a"
    ]
    assert table_row(section, "HalfCheetah-v5")[1:3] == ["3, 4, 5", "4600 / 4500 / 4700"]
    assert table_row(section, "HalfCheetah-v5")[-2] == "yes"
    assert table_row(section, "Hopper-v5")[1:3] == ["3, 4", "3600 / unfinished"]
    assert table_row(section, "Hopper-v5")[-2] == "no"
    assert table_row(text, "Walker2d-v5")[1] == "5372 / 4612 / 4715"  # the main table keeps seeds 0, 1, 2


def test_general_preset_table_has_a_row_per_task_and_marks_unfinished_runs(tmp_path: Path) -> None:
    general = tmp_path / "results" / "general"
    write_run(general / "0", [1.0, 2.0, 3.0], eval_return=1221.4, config={"seed": 0, "env.id": "Ant-v5"})
    write_run(general / "4", [1.0, 2.0, 3.0], eval_return=-3.27, config={"seed": 0, "env.id": "Reacher-v5"})
    write_run(general / "1", [1.0, 2.0, 3.0], eval_return=328.0, config={"seed": 0, "env.id": "Swimmer-v5"})
    write_run(general / "2", [1.0, 2.0, 3.0], eval_return=340.0, config={"seed": 1, "env.id": "Swimmer-v5"})
    write_run(general / "3", [1.0, 2.0], config={"seed": 2, "env.id": "Swimmer-v5"})  # still training
    out = tmp_path / "results.md"

    main(["--results-dir", str(tmp_path / "results"), "--out", str(out)])

    text = out.read_text()
    assert "## The general preset on every task it was run on" in text
    # one seed: no spread to show; the last cell is Tianshou's TRPO on the task
    assert table_row(text, "Ant-v5") == ["Ant-v5", "0", "1221", "n/a", "300", "n/a", "2867 ± 708"]
    assert table_row(text, "Reacher-v5")[2] == "-3.3"  # small returns keep a decimal
    assert table_row(text, "Swimmer-v5") == [
        "Swimmer-v5", "0, 1, 2", "328 / 340 / unfinished", "334 ± 6", "300", "n/a", "40.9 ± 19.6"
    ]
    assert "| HalfCheetah-v5 |" not in text.split("## Anchors")[0]  # no preset runs: no preset rows


def test_best_during_training_is_the_top_of_the_seed_mean_evaluation_curve(tmp_path: Path) -> None:
    """Runs evaluated every few epochs (eval.freq): the highest point of the EvalEpRet curve averaged over the
    finished seeds, ± std over seeds there, as Tianshou's tables are made; the goal is still judged on the final
    EvalEpRet. An unfinished run's last EvalEpRet is an eval.freq one: it is neither final nor in the curve. A run
    evaluated only at the end leaves no shared points, so n/a."""
    results = tmp_path / "results"
    during = {0: [None, 3000.0, None, 5200.0, None], 1: [None, 4000.0, None, 4100.0, None]}
    for seed, final in ((0, 4800.0), (1, 4300.0)):
        write_run(results / "walker2d" / str(seed), [1.0] * 5, eval_return=final,
                  config={"seed": seed, "env.id": "Walker2d-v5", "epochs": 5, "eval": {"freq": 2}},
                  columns={"EvalEpRet": during[seed]})
    write_run(results / "walker2d" / "2", [1.0] * 4,
              config={"seed": 2, "env.id": "Walker2d-v5", "epochs": 5, "eval": {"freq": 2}},
              columns={"EvalEpRet": [None, 9000.0, None, 9000.0]})  # stopped after an evaluation
    write_run(results / "general" / "Ant-v5" / "0", [1.0] * 3, eval_return=2000.0,
              config={"seed": 0, "env.id": "Ant-v5"}, columns={"EvalEpRet": [2100.0, None, None]})
    write_run(results / "general" / "Ant-v5" / "1", [1.0] * 3, eval_return=1900.0,
              config={"seed": 1, "env.id": "Ant-v5"})  # evaluated only at the end
    write_run(results / "general" / "Hopper-v5" / "0", [1.0] * 3, eval_return=3000.0,
              config={"seed": 0, "env.id": "Hopper-v5"}, columns={"EvalEpRet": [3100.0, 2900.0, None]})
    out = tmp_path / "results.md"

    main(["--results-dir", str(results), "--out", str(out)])

    text = out.read_text()
    walker = table_row(text, "Walker2d-v5")
    assert walker[1:3] == ["4800 / 4300 / unfinished", "4550 ± 250"]  # final EvalEpRet of the finished runs
    # seed means 3500 at 200 steps, 4650 at 400, 4550 at 500 (the final evaluations): 4650 ± 550 at 400
    assert walker[-1] == "4650 ± 550 (at 400 steps)"
    general = text.split("## The general preset")[1]
    assert table_row(general, "Ant-v5")[-2] == "n/a"
    assert table_row(general, "Hopper-v5")[-2:] == ["3100 (at 100 steps)", "2046 ± 1038"]
    assert "logger.mode=disabled eval.freq=2 hydra.sweep.dir" in text  # the header's command: the runs' own


def test_the_report_remade_from_its_run_records_is_the_same(tmp_path: Path) -> None:
    results = tmp_path / "results"
    write_task(results, "walker2d", "Walker2d-v5", [5371.504665363075, 4611.657247831988, 4715.241530981728])
    write_task(results / "heldout", "hopper", "Hopper-v5", [3600.0, None], first_seed=3)
    write_run(results / "general" / "Ant-v5" / "0", [1.5, 2.25, 3.0], eval_return=-3.27,
              config={"seed": 0, "env.id": "Ant-v5"}, columns={"KL": [0.01, 0.02, 0.03]})
    write_run(results / "elsewhere" / "0", [1.0], eval_return=1.0, config={"seed": 0})  # not read by the report
    out = tmp_path / "docs" / "results.md"

    main(["--results-dir", str(results), "--out", str(out)])

    records = tmp_path / "docs" / "results-runs"
    assert sorted(p.relative_to(records).as_posix() for p in records.rglob("progress.csv")) == [
        "general/Ant-v5/0/progress.csv", "heldout/hopper/3/progress.csv", "heldout/hopper/4/progress.csv",
        "walker2d/0/progress.csv", "walker2d/1/progress.csv", "walker2d/2/progress.csv",
    ]
    ant = (records / "general" / "Ant-v5" / "0" / "progress.csv").read_text().splitlines()
    assert ant[0] == "Epoch,TotalEnvInteracts,AverageEpRet,EvalEpRet"  # only the columns the report reads
    assert ant[-1] == "2,300,3,-3.27"
    first = out.read_text()
    recorded = {p: p.read_bytes() for p in records.rglob("*") if p.is_file()}

    main(["--results-dir", str(records), "--out", str(out)])  # remade from the records alone

    def tables(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.startswith("|")]

    assert tables(out.read_text()) == tables(first)
    assert table_row(first, "Walker2d-v5")[1] == "5372 / 4612 / 4715"
    assert read_run(records / "walker2d" / "0").eval_return == 5371.504665363075  # every digit kept
    assert {p: p.read_bytes() for p in records.rglob("*") if p.is_file()} == recorded  # left as they were
    (results / "walker2d" / "2").rename(tmp_path / "gone")
    main(["--results-dir", str(results), "--out", str(out)])
    assert not (records / "walker2d" / "2").exists()  # the records are those of the report's runs, no others


def test_a_section_without_runs_is_read_from_its_records_which_stay(tmp_path: Path) -> None:
    """Rerunning one section (here walker2d's seeds) leaves the others as their committed records say: read from
    them, named in the header, and not rewritten; only the rerun section's records are replaced."""
    out = tmp_path / "docs" / "results.md"
    records = out.parent / "results-runs"
    write_task(records, "hopper", "Hopper-v5", [3708.0, 3541.0, 3550.0])
    write_run(records / "general" / "Ant-v5" / "0", [1.0, 2.0, 3.0], eval_return=2563.0,
              config={"seed": 0, "env.id": "Ant-v5"})
    write_task(records, "walker2d", "Walker2d-v5", [1.0, 2.0, 3.0, 4.0])  # an older record of the rerun section
    kept = {p: p.read_bytes() for p in records.rglob("*") if p.is_file() and "walker2d" not in p.parts}
    results = tmp_path / "results"
    write_task(results, "walker2d", "Walker2d-v5", [5198.0, 4801.0, 4315.0])

    main(["--results-dir", str(results), "--out", str(out)])

    text = out.read_text()
    assert table_row(text, "Hopper-v5")[1:3] == ["3708 / 3541 / 3550", "3600 ± 77"]
    assert table_row(text, "Walker2d-v5")[1] == "5198 / 4801 / 4315"
    assert table_row(text.split("## The general preset")[1], "Ant-v5")[2] == "2563"
    assert "read from their records in `results-runs/`, as committed: `hopper`, `general/Ant-v5`." in text
    assert {p: p.read_bytes() for p in kept} == kept
    assert sorted(p.name for p in (records / "walker2d").iterdir()) == ["0", "1", "2"]


def test_the_goal_is_judged_on_seeds_0_1_2_and_only_drawn_figures_are_shown(tmp_path: Path) -> None:
    results = tmp_path / "results"
    write_task(results, "hopper", "Hopper-v5", [3708.0, 3541.0, 3550.0, 100.0])  # seed 3 is not the goal's
    write_task(results, "walker2d", "Walker2d-v5", [6000.0, 6000.0])  # seed 2 missing: not met, however high
    out = tmp_path / "docs" / "results.md"
    (out.parent / "figures").mkdir(parents=True)
    (out.parent / "figures" / "results-halfcheetah.png").write_bytes(b"an older run's figure")

    main(["--results-dir", str(results), "--out", str(out)])

    text = out.read_text()
    assert table_row(text, "Hopper-v5")[1:3] == ["3708 / 3541 / 3550", "3600 ± 77"]
    assert table_row(text, "Hopper-v5")[-2] == "yes"
    assert table_row(text, "Walker2d-v5")[1] == "6000 / 6000" and table_row(text, "Walker2d-v5")[-2] == "no"
    assert "figures/results-hopper.png" in text and "figures/results-halfcheetah.png" not in text


def test_sb3_table_sets_the_rerun_anchor_beside_the_preset_on_the_seeds_both_have(tmp_path: Path) -> None:
    """``make results-sb3``'s runs (trpo/baseline.py writes them as run dirs) get a table of their own: per seed,
    mean ± std, how many seeds fell below the goal's floor, and the task preset on the seeds both have finished
    (here 0-3, from the seeds-0-2 dir and the held-out one; seed 4 has no preset run, seed 5 is unfinished)."""
    results = tmp_path / "results"
    write_task(results, "walker2d", "Walker2d-v5", [5372.0, 4612.0, 4715.0])
    write_task(results / "heldout", "walker2d", "Walker2d-v5", [5100.0], first_seed=3)
    write_task(results / "sb3", "walker2d", "Walker2d-v5", [5000.0, 4000.0, 2000.0, 3000.0, 3500.0, None])
    out = tmp_path / "docs" / "results.md"

    main(["--results-dir", str(results), "--out", str(out)])

    text = out.read_text()
    section = text.split("## The first anchor rerun here")[1].split("## ")[0]
    assert table_row(section, "Walker2d-v5") == [
        "Walker2d-v5", "0, 1, 2, 3, 4, 5", "5000 / 4000 / 2000 / 3000 / 3500 / unfinished", "3500 ± 1000", "300",
        "3 of 5 (< 4000)", "4950 ± 304 against 3500 (seeds 0, 1, 2, 3)",
    ]
    assert "| HalfCheetah-v5 |" not in section  # no sb3 runs of that task: no row
    assert "The first is rerun here on more seeds below." in text
    assert (out.parent / "results-runs" / "sb3" / "walker2d" / "5" / "progress.csv").is_file()  # recorded too
