"""``make results``: ``docs/results.md`` from the runs of the 1M-step presets, beside published TRPO results.

For each task it reads the runs under ``outputs/results/<task>/`` (written by
``python launch.py -m experiment=<task> seed=0,1,2``), tabulates each seed's final deterministic evaluation
(``EvalEpRet``, the mean of ``eval.episodes`` episodes) and the mean ± std over seeds next to the goal and the
anchors below, and draws the learning curves (mean ± std over seeds against env steps) with ``trpo.compare``.
A second table shows the presets on seeds they were not chosen on, from ``outputs/results/heldout/<task>/``
(``make results-heldout``: seeds 3-8); a preset fitted to its three seeds would fall there. A third shows the
general preset on every task it was run on, one row per Gymnasium id found under ``outputs/results/general/``
(``python launch.py -m experiment=mujoco env=ant,swimmer,... seed=0``). A fourth shows the first anchor,
sb3-contrib's TRPO at rl-baselines3-zoo's settings, rerun here on more seeds (``make results-sb3``, written by
:mod:`trpo.baseline` under ``outputs/results/sb3/<task>/``), beside the task presets on the seeds both have.
Every number of ours comes from the runs' own ``progress.csv``; nothing is typed in.

Beside the report it keeps the runs' records, ``docs/results-runs/`` (each run's ``.hydra/config.yaml`` and the
``progress.csv`` columns read here, at the run's path under the results dir): ``outputs/`` is not committed, so
these are what the report can be checked against and remade from (``--results-dir docs/results-runs``). A section
(a task preset's seeds 0-2, its held-out seeds, one task of the general preset or of sb3-contrib's runs) with no
runs under the results dir is read from its records instead, and its records are kept: rerunning one section leaves
the others as they were.
"""

from __future__ import annotations

import argparse
import csv
import math
import shutil
import sys
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from trpo.compare import Group, Run, collect_runs, markdown_table, plot_curves, when_and_where

ROOT = Path(__file__).resolve().parents[1]

# Task preset -> Gymnasium id, and the goal of the project's results issue (mean over GOAL_SEEDS).
TASKS = {
    "halfcheetah": ("HalfCheetah-v5", 4500.0),
    "hopper": ("Hopper-v5", 3500.0),
    "walker2d": ("Walker2d-v5", 5000.0),
}
GOAL_SEEDS = (0, 1, 2)
# No seed may end below this share of its task's goal.
SEED_FLOOR = 0.8
# Under the results dir: the presets on held-out seeds (``make results-heldout``), one dir per task.
HELDOUT_DIR = "heldout"
# Under the results dir: runs of the general preset on any task (``make results-general``).
GENERAL_DIR = "general"
# Under the results dir: sb3-contrib's TRPO at rl-zoo's settings (``make results-sb3``), one dir per task.
SB3_DIR = "sb3"
# Beside the report: the records of the runs it was made from.
RECORDS_NAME = "results-runs"
# The progress.csv columns the report reads (curves: AverageEpRet against TotalEnvInteracts; tables: EvalEpRet).
RECORD_COLUMNS = ("Epoch", "TotalEnvInteracts", "AverageEpRet", "EvalEpRet")

# Published or previously measured TRPO results at 1M env steps, quoted from their sources.
ANCHORS = {
    "sb3-contrib + rl-zoo tuned, v5, this machine kind (seeds 0/1/2, mean)": {
        "HalfCheetah-v5": "3642 / 4596 / 1632 (3290)",
        "Hopper-v5": "3493 / 702 / 1286 (1827)",
        "Walker2d-v5": "4999 / 4183 / 5004 (4729)",
    },
    "sb3-contrib published (3 seeds, v3)": {
        "HalfCheetah-v5": "1803 ± 46",
        "Hopper-v5": "3372 ± 215",
        "Walker2d-v5": "4502 ± 234",
    },
    "Tianshou (10 seeds, best average during training)": {
        "HalfCheetah-v5": "4471",
        "Hopper-v5": "2046",
        "Walker2d-v5": "3827",
    },
    "OpenAI Baselines (6 seeds)": {"HalfCheetah-v5": "1290", "Hopper-v5": "1913", "Walker2d-v5": "2343"},
}
# The one published TRPO table that covers most MuJoCo tasks, for the general preset's table: Tianshou's
# (examples/mujoco/README.md; 10 seeds, the best average test return within 1M steps ± std over seeds, on the -v3
# and -v2 tasks). A best-during-training figure is kinder than our final policy's return.
GENERAL_ANCHOR = "Tianshou TRPO (10 seeds, best during training)"
GENERAL_ANCHORS = {
    "Ant-v5": "2867 ± 708",
    "HalfCheetah-v5": "4471 ± 805",
    "Hopper-v5": "2046 ± 1038",
    "Humanoid-v5": "810 ± 126",
    "InvertedDoublePendulum-v5": "8435 ± 1073",
    "InvertedPendulum-v5": "1000 ± 0",
    "Reacher-v5": "-5.1 ± 0.8",
    "Swimmer-v5": "40.9 ± 19.6",
    "Walker2d-v5": "3827 ± 783",
}


def by_seed(runs: Sequence[Run]) -> list[Run]:
    return sorted(runs, key=lambda r: (r.seed is None, r.seed))


def runs_under(directory: Path) -> list[Run]:
    """The runs under ``directory`` by seed; none when it does not exist yet."""
    return by_seed(collect_runs([directory])) if directory.is_dir() else []


def seed_list(runs: Sequence[Run]) -> str:
    return ", ".join(str(r.seed) for r in runs)


def format_return(value: float, scale: Optional[float] = None) -> str:
    """Whole numbers, but one decimal where returns (or ``scale``, the mean a std goes with) are small: Reacher's
    are about -4."""
    return f"{value:.0f}" if abs(value if scale is None else scale) >= 100 else f"{value:.1f}"


def seed_cells(runs: Sequence[Run]) -> tuple[str, str, str]:
    """EvalEpRet per seed ("unfinished" where a run has none), mean ± std over the finished runs (n/a for fewer
    than two), and the env steps reached."""
    finals = [r.eval_return for r in runs]
    seeds = " / ".join(format_return(v) if v is not None else "unfinished" for v in finals)
    done = np.array([v for v in finals if v is not None])
    mean_std = f"{format_return(done.mean())} ± {format_return(done.std(), done.mean())}" if len(done) > 1 else "n/a"
    return seeds, mean_std, f"{max(r.steps_reached for r in runs):,}"


def best_during_training(runs: Sequence[Run]) -> str:
    """The highest point of the finished runs' EvalEpRet curve averaged over seeds, ± the std over seeds there,
    and where: the figure Tianshou's tables report (the mean test curve's maximum within 1M steps, its
    examples/mujoco/analysis.py). Only for runs evaluated during training too (``eval.freq``), at env steps they
    share; "n/a" otherwise."""
    curves = []
    for run in runs:
        if run.eval_return is None:
            continue
        returns = run.column("EvalEpRet")
        evaluated = np.isfinite(returns)
        curves.append(dict(zip(run.steps[evaluated], returns[evaluated])))
    shared = sorted(set.intersection(*(set(curve) for curve in curves))) if curves else []
    if len(shared) < 2:
        return "n/a"
    values = np.array([[curve[step] for step in shared] for curve in curves])  # seeds x evaluations
    best = int(np.argmax(values.mean(axis=0)))
    mean, std = values[:, best].mean(), values[:, best].std()
    spread = f" ± {format_return(std, mean)}" if len(curves) > 1 else ""
    return f"{format_return(mean)}{spread} (at {shared[best]:,.0f} steps)"


def meets_goal(runs: Sequence[Run], goal: float) -> bool:
    """The issue's test: every run finished, the mean over them reaches ``goal`` and none ends below
    ``SEED_FLOOR * goal``."""
    finals = np.array([r.eval_return for r in runs if r.eval_return is not None])
    return bool(runs) and len(finals) == len(runs) and finals.mean() >= goal and finals.min() >= SEED_FLOOR * goal


def goal_cell(goal: float) -> str:
    return f"{goal:.0f} (no seed < {SEED_FLOOR * goal:.0f})"


def task_row(
    task: str, env_id: str, goal: float, runs: Sequence[Run], figure: Path, sb3_runs: Sequence[Run]
) -> Optional[list[str]]:
    """One table row for the task preset's runs on :data:`GOAL_SEEDS` (None when it has none yet), and their
    learning-curve figure, with sb3-contrib's on those seeds beside them where there are any; the goal is met only
    with every one of those seeds finished."""
    runs = [r for r in runs if r.seed in GOAL_SEEDS]
    if not runs:
        return None
    groups = [Group(f"TRPO, experiment={task}", runs)]
    if sb3 := [r for r in sb3_runs if r.seed in GOAL_SEEDS]:
        groups.append(Group("sb3-contrib TRPO, rl-zoo settings", sb3))
    plot_curves(groups, figure, title=f"{env_id}")
    seeds, mean_std, steps = seed_cells(runs)
    met = tuple(r.seed for r in runs) == GOAL_SEEDS and meets_goal(runs, goal)
    return [env_id, seeds, mean_std, steps, goal_cell(goal), "yes" if met else "no", best_during_training(runs)]


def tasks_with_runs(runs_by_task: dict[str, list[Run]]) -> Iterator[tuple[str, str, float, list[Run]]]:
    """(task, Gymnasium id, goal, runs) for each of :data:`TASKS` that has runs, in that order."""
    for task, (env_id, goal) in TASKS.items():
        if runs_by_task[task]:
            yield task, env_id, goal, runs_by_task[task]


def heldout_rows(heldout_runs: dict[str, list[Run]]) -> list[list[str]]:
    """One row per task preset with held-out runs: its seeds, EvalEpRet per seed, mean ± std, env steps, the goal,
    and whether these seeds (every one finished) meet it too."""
    rows = []
    for _, env_id, goal, runs in tasks_with_runs(heldout_runs):
        seeds, mean_std, steps = seed_cells(runs)
        met = meets_goal(runs, goal)
        rows.append([
            env_id, seed_list(runs), seeds, mean_std, steps, goal_cell(goal), "yes" if met else "no",
            best_during_training(runs),
        ])
    return rows


def general_rows(general_runs: Sequence[Run]) -> list[list[str]]:
    """One row per Gymnasium id among the general preset's runs: its seeds, EvalEpRet per seed, mean ± std, env
    steps, the best EvalEpRet during training and Tianshou's TRPO on that task ("n/a" where it has none)."""
    by_env: dict[str, list[Run]] = {}
    for run in general_runs:
        by_env.setdefault(str((run.config or {}).get("env.id", "unknown")), []).append(run)
    rows = []
    for env_id in sorted(by_env):
        runs = by_seed(by_env[env_id])
        seeds, mean_std, steps = seed_cells(runs)
        rows.append([
            env_id, seed_list(runs), seeds, mean_std, steps, best_during_training(runs),
            GENERAL_ANCHORS.get(env_id, "n/a"),
        ])
    return rows


def sb3_rows(sb3_runs: dict[str, list[Run]], preset_runs: dict[str, list[Run]]) -> list[list[str]]:
    """One row per task with sb3-contrib runs: its seeds, EvalEpRet per seed, mean ± std, env steps, how many seeds
    ended below the goal's floor, and the task preset's EvalEpRet mean ± std on the seeds both have finished.
    ``preset_runs``: the preset's runs on seeds 0-2 and its held-out ones, taken as one preset (the report's two
    tables of it); where both hold a seed, the later one counts."""
    rows = []
    for task, env_id, goal, runs in tasks_with_runs(sb3_runs):
        seeds, mean_std, steps = seed_cells(runs)
        finals = [r.eval_return for r in runs if r.eval_return is not None]
        below = sum(value < SEED_FLOOR * goal for value in finals)
        ours = {r.seed: r.eval_return for r in preset_runs[task] if r.eval_return is not None}
        shared = [r.seed for r in runs if r.eval_return is not None and r.seed in ours]
        if len(shared) > 1:
            preset_finals = np.array([ours[seed] for seed in shared])
            sb3_finals = np.array([r.eval_return for r in runs if r.seed in shared])
            preset_cell = (
                f"{format_return(preset_finals.mean())} ± {format_return(preset_finals.std(), preset_finals.mean())}"
                f" against {format_return(sb3_finals.mean())} (seeds {', '.join(map(str, shared))})"
            )
        else:
            preset_cell = "n/a"
        rows.append([
            env_id, seed_list(runs), seeds, mean_std, steps, f"{below} of {len(finals)} (< {SEED_FLOOR * goal:.0f})",
            preset_cell,
        ])
    return rows


def display_path(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def sections(results_dir: Path, records_dir: Path) -> list[Path]:
    """The report's sections, as paths relative to the results dir: each task preset's dir, its held-out dir, one
    dir per task of the general preset (``general/<env id>``) found under either dir, and each task's sb3-contrib
    dir."""
    general = {
        d.name for root in (results_dir, records_dir) if (root / GENERAL_DIR).is_dir()
        for d in (root / GENERAL_DIR).iterdir() if d.is_dir()
    }
    return [
        *(Path(task) for task in TASKS),
        *(Path(HELDOUT_DIR) / task for task in TASKS),
        *(Path(GENERAL_DIR) / name for name in sorted(general)),
        *(Path(SB3_DIR) / task for task in TASKS),
    ]


def section_runs(results_dir: Path, records_dir: Path, section: Path) -> tuple[list[Run], bool]:
    """The section's runs under the results dir, or, where it has none there, from its records; and whether they
    came from the records."""
    runs = runs_under(results_dir / section)
    if runs or results_dir.resolve() == records_dir.resolve():
        return runs, False
    recorded = runs_under(records_dir / section)
    return recorded, bool(recorded)


def csv_cell(value: float) -> str:
    """A value as :func:`trpo.compare.read_table` reads it back unchanged: empty for NaN, whole numbers without
    a decimal point, others in Python's shortest exact form."""
    if math.isnan(value):
        return ""
    return str(int(value)) if value.is_integer() else repr(value)


def write_records(results_dir: Path, records_dir: Path) -> int:
    """Replace the records of each section with runs under ``results_dir`` by those runs' records: per run, at its
    path under ``results_dir``, its ``.hydra/config.yaml`` and the :data:`RECORD_COLUMNS` of its ``progress.csv``.
    Sections without runs there keep their records. Returns the number of runs recorded."""
    count = 0
    for section in sections(results_dir, records_dir):
        runs = runs_under(results_dir / section)
        if not runs:
            continue
        if (records_dir / section).exists():
            shutil.rmtree(records_dir / section)
        for run in runs:
            record = records_dir / run.path.relative_to(results_dir)
            (record / ".hydra").mkdir(parents=True)
            config = run.path / ".hydra" / "config.yaml"
            if config.is_file():
                shutil.copyfile(config, record / ".hydra" / "config.yaml")
            with open(record / "progress.csv", "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(RECORD_COLUMNS)
                columns = [run.column(key) for key in RECORD_COLUMNS]
                writer.writerows([csv_cell(float(c[i])) for c in columns] for i in range(len(run.steps)))
        count += len(runs)
    return count


def eval_freq_override(runs: Sequence[Run]) -> str:
    """The runs' ``eval.freq`` as the override in the report's command line (``make results`` passes its
    ``EVAL_FREQ``): empty where they were not evaluated during training, the values joined by "|" where they
    differ."""
    values = sorted({int(r.config.get("eval.freq", 0)) for r in runs if r.config is not None} - {0})
    return f"eval.freq={'|'.join(map(str, values))} " if values else ""


def write_report(results_dir: Path, out: Path, command_args: Sequence[str]) -> str:
    """Write the report to ``out`` and return it; ``command_args``: the arguments it was made with, for its header.
    Sections without runs under ``results_dir`` are read from the records beside ``out``."""
    figures = out.parent / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    records_dir = out.parent / RECORDS_NAME
    read, from_records = {}, []
    for section in sections(results_dir, records_dir):
        read[section], recorded = section_runs(results_dir, records_dir, section)
        if recorded:
            from_records.append(section.as_posix())
    preset_runs = {task: read[Path(task)] for task in TASKS}
    rows, drawn = [], []
    for task, (env_id, goal) in TASKS.items():
        figure = figures / f"results-{task}.png"
        if row := task_row(task, env_id, goal, preset_runs[task], figure, read[Path(SB3_DIR) / task]):
            rows.append(row)
            drawn.append(task)
    heldout = heldout_rows({task: read[Path(HELDOUT_DIR) / task] for task in TASKS})
    heldout_lines = [
        "## The presets on seeds they were not chosen on",
        "",
        (
            "Each preset above was chosen by its runs on seeds 0, 1, 2. The same presets, unchanged, on other seeds "
            f"(`make results-heldout`), runs under `{display_path(results_dir / HELDOUT_DIR)}`; EvalEpRet as above."
        ),
        "",
        *markdown_table(
            ["task", "seeds", "EvalEpRet per seed", "mean ± std", "env steps", "goal", "goal met on these seeds",
             "best EvalEpRet during training"],
            heldout,
        ),
        "",
    ]
    general = general_rows([run for section, runs in read.items() if section.parts[0] == GENERAL_DIR for run in runs])
    general_lines = [
        "## The general preset on every task it was run on",
        "",
        (
            "One set of hyperparameters, `python launch.py -m experiment=mujoco env=<task> seed=...` "
            f"(`make results-general`), runs under `{display_path(results_dir / GENERAL_DIR)}`; EvalEpRet as above. "
            "Beside it, quoted and not rerun: Tianshou's TRPO (its examples/mujoco/README.md), the best average test "
            "return within 1M steps ± std over 10 seeds, on the -v3 / -v2 tasks; a best during training is kinder "
            "than a final policy's return. Ours of the same kind, where the runs were evaluated during training too "
            "(`eval.freq`): the best point of the EvalEpRet curve averaged over seeds, ± std over seeds there."
        ),
        "",
        *markdown_table(
            ["task", "seeds", "EvalEpRet per seed", "mean ± std", "env steps", "best EvalEpRet during training",
             GENERAL_ANCHOR],
            general,
        ),
        "",
    ]
    sb3 = sb3_rows(
        {task: read[Path(SB3_DIR) / task] for task in TASKS},
        {task: [*preset_runs[task], *read[Path(HELDOUT_DIR) / task]] for task in TASKS},
    )
    sb3_lines = [
        "## The first anchor rerun here: sb3-contrib's TRPO at rl-baselines3-zoo's settings",
        "",
        (
            "sb3-contrib's TRPO with rl-baselines3-zoo's tuned MuJoCo settings (`make results-sb3`, `trpo/baseline.py`:"
            " 2 envs of 1,024 steps, VecNormalize, 16 critic minibatches, 20 critic passes), 999,424 env steps as the "
            "presets, on more seeds than the anchor above was quoted on; runs under "
            f"`{display_path(results_dir / SB3_DIR)}`. EvalEpRet as above (observation statistics frozen). The last "
            "column: the task preset (the first table and the held-out one) on the seeds both have, against "
            "sb3-contrib on those seeds. Its seeds 0-2 are drawn beside the presets' in the learning curves below."
        ),
        "",
        *markdown_table(
            ["task", "seeds", "EvalEpRet per seed", "mean ± std", "env steps", "seeds below the goal's floor",
             "the task preset on the same seeds"],
            sb3,
        ),
        "",
    ]
    recorded_note = (
        f" Sections with no runs there were read from their records in `{RECORDS_NAME}/`, as committed: "
        + ", ".join(f"`{section}`" for section in from_records) + "."
        if from_records else ""
    )
    lines = [
        "# Results at 1M env steps",
        "",
        f"Made {when_and_where()} by `{' '.join(['python -m trpo.results', *command_args])}`, from the runs under "
        f"`{display_path(results_dir)}`: "
        "`python launch.py -m experiment=<task> seed=0,1,2 overlap_value_fit=false "
        f"logger.mode=disabled {eval_freq_override([r for runs in preset_runs.values() for r in runs])}"
        "hydra.sweep.dir=outputs/results/<task> 'hydra.sweep.subdir=${seed}'`, as `make results` runs them. "
        f"What this report read from each run is kept in `{RECORDS_NAME}/` beside it.{recorded_note}",
        "",
        "EvalEpRet: the final policy's deterministic evaluation, mean over 10 episodes, per seed (0 / 1 / 2). The goal "
        "is judged on it. Best during training: where the runs were evaluated every `eval.freq` epochs too, the "
        "best point of their EvalEpRet curve averaged over seeds, ± std over seeds there (and its env steps): the "
        "figure Tianshou's row below reports.",
        "",
        *markdown_table(
            ["task", "EvalEpRet per seed", "mean ± std", "env steps", "goal", "goal met",
             "best EvalEpRet during training"],
            rows,
        ),
        "",
        "## Anchors (quoted from their sources)",
        "",
        *(["The first is rerun here on more seeds below.", ""] if sb3 else []),
        *markdown_table(
            ["source", *(env_id for env_id, _ in TASKS.values())],
            [[name, *(values[env_id] for env_id, _ in TASKS.values())] for name, values in ANCHORS.items()],
        ),
        "",
        *(heldout_lines if heldout else []),
        *(general_lines if general else []),
        *(sb3_lines if sb3 else []),
        "## Learning curves (mean ± std over seeds)",
        "",
        *(f"![{task}](figures/results-{task}.png)" for task in drawn),
        "",
    ]
    text = "\n".join(lines)
    out.write_text(text)
    return text


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", type=Path, default=ROOT / "outputs" / "results")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results.md")
    command_args = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(command_args)
    print(write_report(args.results_dir, args.out, command_args))
    records = args.out.parent / RECORDS_NAME
    if not args.results_dir.resolve().is_relative_to(records.resolve()):  # remade from the records: they stay
        count = write_records(args.results_dir, records)
        print(f"records of {count} runs: {display_path(records)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
