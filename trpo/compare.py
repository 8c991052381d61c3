"""Compare runs: `python -m trpo.compare DIR [DIR ...]` -> learning curves and a summary table.

Each DIR is a sweep dir (``launch.py -m``), a single run dir, or any dir holding run dirs (``outputs/``).
A run is a dir with ``progress.csv`` and/or ``.hydra/config.yaml``; a run with ``error.txt`` is listed as failed.

Runs are grouped by the config values that differ between them, with the seed pooled: the flattened configs
of all runs are compared key by key, keys that never change what is learned (``seed``, ``logger.*``,
``save_freq``) are dropped, and runs that agree on the remaining differing keys form one group, labelled
like ``optimizer.delta=0.05``.

Into the first DIR it writes ``compare.png`` (AverageEpRet against env steps, per group the mean over seeds
with a +-std band) and ``compare.md`` (one row per group, one row per run), and prints the same tables.

Std is numpy's default, the population std over runs (ddof=0), so a group of one run has std 0.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

# Keys that never change what a run learns, so they never split runs into groups.
IGNORED_KEYS = ("seed", "save_freq")
IGNORED_PREFIXES = ("logger.",)

# Subdirectories that never hold runs; skipping them keeps the search fast (W&B dirs hold many files).
SKIPPED_DIRS = ("wandb", ".hydra")

PNG_NAME = "compare.png"
MD_NAME = "compare.md"

Flat = dict[str, Any]


@dataclass
class Run:
    """One run dir as read from disk: its config, its epochs, and how it ended (if it did)."""

    path: Path
    config: Optional[Flat]  # flattened .hydra/config.yaml; None when missing or unreadable
    steps: np.ndarray  # TotalEnvInteracts per epoch
    returns: np.ndarray  # AverageEpRet per epoch; NaN where no episode finished in the epoch
    eval_return: Optional[float]  # EvalEpRet of the last row; only a finished run has one
    error: Optional[str]  # first line of error.txt

    @property
    def seed(self) -> Optional[Any]:
        return None if self.config is None else self.config.get("seed")

    @property
    def epochs_planned(self) -> Optional[int]:
        return None if self.config is None else self.config.get("epochs")

    @property
    def steps_reached(self) -> int:
        return int(self.steps[-1]) if len(self.steps) else 0

    @property
    def status(self) -> str:
        """``finished``, ``failed: <first line of error.txt>``, or ``running or incomplete (k/N epochs)``."""
        if self.error is not None:
            return f"failed: {self.error}"
        if self.eval_return is not None:
            return "finished"
        planned = f"/{self.epochs_planned}" if self.epochs_planned is not None else ""
        return f"running or incomplete ({len(self.steps)}{planned} epochs)"


@dataclass
class Group:
    """Runs that share every config value that differs between runs, except the seed."""

    label: str
    runs: list[Run] = field(default_factory=list)


@dataclass
class Curve:
    """A group's learning curve: mean and std over its runs at each env step all of them reached."""

    steps: np.ndarray
    mean: np.ndarray
    std: np.ndarray


# ---------------------------------------------------------------------------------------------------------
# Finding and reading runs


def is_run_dir(path: Path) -> bool:
    """A run dir holds progress.csv (a run that logged an epoch) or .hydra/config.yaml (any launched job)."""
    return (path / "progress.csv").is_file() or (path / ".hydra" / "config.yaml").is_file()


def find_run_dirs(root: Path) -> list[Path]:
    """Every run dir at or under ``root``, sorted; the search does not go inside a run dir."""
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        path = Path(dirpath)
        if is_run_dir(path):
            found.append(path)
            dirnames[:] = []  # a run dir holds no further runs
        else:
            dirnames[:] = [d for d in dirnames if d not in SKIPPED_DIRS]
    return sorted(found, key=natural_path_key)


def natural_path_key(path: Path) -> list[Any]:
    """Sort key so that sweep job dirs come out 0, 1, 2, ..., 10 rather than 0, 1, 10, 2."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts]


def flatten(tree: Any, prefix: str = "") -> Flat:
    """``{"a": {"b": 1}, "c": [1, 2]}`` -> ``{"a.b": 1, "c": (1, 2)}``; lists become tuples so they compare."""
    if isinstance(tree, dict):
        flat: Flat = {}
        for key, value in tree.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    if isinstance(tree, list):
        return {prefix[:-1]: tuple(tree)}
    return {prefix[:-1]: tree}


def read_config(path: Path) -> Optional[Flat]:
    """The flattened, resolved ``.hydra/config.yaml`` of a run; None if it is missing or unreadable."""
    from omegaconf import OmegaConf

    file = path / ".hydra" / "config.yaml"
    if not file.is_file():
        return None
    try:
        cfg = OmegaConf.load(file)
        try:
            tree = OmegaConf.to_container(cfg, resolve=True)
        except Exception:  # an interpolation that only resolves inside Hydra: keep it as written
            tree = OmegaConf.to_container(cfg, resolve=False)
    except Exception:
        return None
    return flatten(tree) if isinstance(tree, dict) else None


def to_float(text: Optional[str]) -> float:
    """A CSV cell as a float; an empty or malformed cell is NaN."""
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def read_progress(path: Path) -> tuple[np.ndarray, np.ndarray, Optional[float]]:
    """(TotalEnvInteracts, AverageEpRet, EvalEpRet of the last row) from ``progress.csv``.

    Rows without a step count (e.g. a line half-written while the run is going) are skipped. A missing file
    gives empty arrays. A run dir used again by a new run gets its rows appended (the CSV logger appends),
    so when the steps start over only the rows of the latest run are kept.
    """
    file = path / "progress.csv"
    steps: list[float] = []
    returns: list[float] = []
    eval_return: Optional[float] = None
    if file.is_file():
        with open(file, newline="") as f:
            for row in csv.DictReader(f):
                step = to_float(row.get("TotalEnvInteracts"))
                if math.isnan(step):
                    continue
                if steps and step <= steps[-1]:  # a new run started in this dir: forget the old one
                    steps, returns, eval_return = [], [], None
                steps.append(step)
                returns.append(to_float(row.get("AverageEpRet")))
                evaluated = to_float(row.get("EvalEpRet"))
                eval_return = None if math.isnan(evaluated) else evaluated
    return np.array(steps, dtype=float), np.array(returns, dtype=float), eval_return


def read_error(path: Path) -> Optional[str]:
    """The first non-empty line of ``error.txt``, or None when the run has no error file."""
    file = path / "error.txt"
    if not file.is_file():
        return None
    lines = [line.strip() for line in file.read_text(errors="replace").splitlines() if line.strip()]
    return lines[0] if lines else "(error.txt is empty)"


def read_run(path: Path) -> Run:
    steps, returns, eval_return = read_progress(path)
    return Run(path, read_config(path), steps, returns, eval_return, read_error(path))


# ---------------------------------------------------------------------------------------------------------
# Grouping


def is_ignored(key: str) -> bool:
    return key in IGNORED_KEYS or key.startswith(IGNORED_PREFIXES)


_MISSING = "<missing>"


def differing_keys(configs: Sequence[Flat]) -> list[str]:
    """The config keys whose value is not the same in every config (a key absent somewhere counts), sorted,
    without the keys that never matter (seed, logger.*, save_freq)."""
    keys = sorted({key for config in configs for key in config})
    return [
        key
        for key in keys
        if not is_ignored(key) and len({repr(config.get(key, _MISSING)) for config in configs}) > 1
    ]


def format_value(value: Any) -> str:
    """A config value as one would type it: ``0.05``, ``[64, 64]``, ``null``, ``true``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return str(value)


def value_sort_key(value: Any) -> tuple:
    """Numbers in numeric order, then everything else by its text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, format_value(value))


def group_runs(runs: Sequence[Run]) -> list[Group]:
    """Split runs into groups by the config values that differ between them, the seed pooled.

    Runs without a readable config cannot be placed, so they form one group of their own. Groups are sorted
    by their values (numbers numerically). With nothing differing, all runs form one group, "all runs".
    """
    with_config = [run for run in runs if run.config is not None]
    keys = differing_keys([run.config for run in with_config])

    def values(run: Run) -> list[Any]:
        return [run.config.get(key, _MISSING) for key in keys]

    by_label: dict[str, Group] = {}  # insertion-ordered: sorting the runs first sorts the groups
    for run in sorted(with_config, key=lambda run: [value_sort_key(v) for v in values(run)]):
        label = ", ".join(f"{key}={format_value(v)}" for key, v in zip(keys, values(run))) or "all runs"
        by_label.setdefault(label, Group(label)).runs.append(run)
    groups = list(by_label.values())
    without_config = [run for run in runs if run.config is None]
    if without_config:
        groups.append(Group("(no .hydra/config.yaml)", without_config))
    return groups


# ---------------------------------------------------------------------------------------------------------
# Statistics


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population std (ddof=0) of the finite values; (nan, nan) when there are none."""
    finite = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if finite.size == 0:
        return math.nan, math.nan
    return float(finite.mean()), float(finite.std())


def common_steps_reached(runs: Sequence[Run]) -> int:
    """The env steps every run that logged an epoch has reached: the end of the group's curve."""
    reached = [run.steps_reached for run in runs if len(run.steps)]
    return min(reached) if reached else 0


def group_curve(runs: Sequence[Run]) -> Optional[Curve]:
    """Mean and std of AverageEpRet over the group's runs, at each env step.

    Runs of unequal length (one still going, one stopped early) are handled by cutting every run at the steps
    all of them reached, so each point of the curve averages the same runs -- no interpolation, and no mean
    that jumps when a seed drops out. Runs of one group share ``steps_per_epoch``, so their steps coincide; a
    step that some run lacks counts as NaN for that run. NaN returns (epochs in which no episode finished)
    are left out of that step's mean; a step where every run has NaN stays NaN, a gap in the line.
    """
    logged = [run for run in runs if len(run.steps)]
    if not logged:
        return None
    end = common_steps_reached(logged)
    steps = np.unique(np.concatenate([run.steps[run.steps <= end] for run in logged]))
    table = np.full((len(logged), len(steps)), np.nan)
    for row, run in enumerate(logged):
        keep = run.steps <= end
        table[row, np.searchsorted(steps, run.steps[keep])] = run.returns[keep]
    with warnings.catch_warnings():  # all-NaN columns: "Mean of empty slice", the result NaN is intended
        warnings.simplefilter("ignore", RuntimeWarning)
        return Curve(steps, np.nanmean(table, axis=0), np.nanstd(table, axis=0))


def final_return(run: Run, end: int) -> float:
    """A run's last finite AverageEpRet at or before ``end`` env steps; NaN if it has none."""
    finite = np.isfinite(run.returns) & (run.steps <= end)
    return float(run.returns[finite][-1]) if finite.any() else math.nan


# ---------------------------------------------------------------------------------------------------------
# Output


def format_mean_std(mean: float, std: float, count: int, total: int) -> str:
    """``12.3 ± 4.5``, with ``(n=count)`` when only some of the group's runs contributed; ``–`` for none."""
    if count == 0 or math.isnan(mean):
        return "–"
    text = f"{mean:.2f} ± {std:.2f}"
    return text if count == total else f"{text} (n={count})"


def steps_text(runs: Sequence[Run]) -> str:
    """The steps all runs reached; ``(max N)`` added when some run went further."""
    end = common_steps_reached(runs)
    furthest = max((run.steps_reached for run in runs), default=0)
    if furthest == 0:
        return "–"
    return f"{end}" if furthest == end else f"{end} (max {furthest})"


def status_counts(runs: Sequence[Run]) -> str:
    """e.g. ``2 finished, 1 failed``."""
    kinds = ["finished" if r.status == "finished" else "failed" if r.error is not None else "incomplete"
             for r in runs]
    return ", ".join(f"{kinds.count(k)} {k}" for k in ("finished", "incomplete", "failed") if k in kinds)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return [line(header), "|" + "|".join("---" for _ in header) + "|", *(line(row) for row in rows)]


def group_row(group: Group) -> list[str]:
    runs = group.runs
    end = common_steps_reached(runs)
    evals = [r.eval_return for r in runs if r.eval_return is not None]
    finals = [final_return(r, end) for r in runs if len(r.steps)]
    finals = [v for v in finals if math.isfinite(v)]
    seeds = ", ".join(format_value(r.seed) if r.seed is not None else "?" for r in runs)
    return [
        group.label,
        str(len(runs)),
        seeds,
        format_mean_std(*mean_std(evals), len(evals), len(runs)),
        format_mean_std(*mean_std(finals), len(finals), len(runs)),
        steps_text(runs),
        status_counts(runs),
    ]


def run_row(group: Group, run: Run, base: Path) -> list[str]:
    final = final_return(run, run.steps_reached)
    return [
        group.label,
        format_value(run.seed) if run.seed is not None else "?",
        str(relative(run.path, base)),
        str(run.steps_reached),
        "–" if math.isnan(final) else f"{final:.2f}",
        "–" if run.eval_return is None else f"{run.eval_return:.2f}",
        run.status,
    ]


def relative(path: Path, base: Path) -> Path:
    try:
        return path.resolve().relative_to(base.resolve())
    except ValueError:
        return path


def markdown_report(groups: Sequence[Group], base: Path) -> str:
    """Both tables: one row per group, then one row per run."""
    lines = ["## Groups", ""]
    lines += markdown_table(
        ["group", "runs", "seeds", "final EvalEpRet", "final AverageEpRet", "steps reached", "status"],
        [group_row(group) for group in groups],
    )
    lines += [
        "",
        "Mean ± std over the group's runs (population std). EvalEpRet: the deterministic evaluation at the end",
        "of finished runs. AverageEpRet: each run's last value at the steps all runs of the group reached (the",
        "end of the group's curve in compare.png). `(n=k)`: only k runs had a value. Steps reached: the env",
        "steps every run of the group reached, `(max N)` when some run went further.",
        "",
        "## Runs",
        "",
    ]
    lines += markdown_table(
        ["group", "seed", "dir", "steps", "last AverageEpRet", "EvalEpRet", "status"],
        [run_row(group, run, base) for group in groups for run in group.runs],
    )
    return "\n".join(lines) + "\n"


def common_value(runs: Sequence[Run], key: str) -> Optional[Any]:
    """The value of ``key`` if every run with a config has the same one, else None."""
    values = {repr(run.config.get(key)) for run in runs if run.config is not None}
    if len(values) != 1:
        return None
    return next(run.config.get(key) for run in runs if run.config is not None)


def plot_curves(groups: Sequence[Group], path: Path) -> None:
    """Write the learning curves: per group the mean AverageEpRet over seeds, with a ±std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [(group, group_curve(group.runs)) for group in groups]
    longest = max((len(curve.steps) for _, curve in curves if curve is not None), default=0)
    marker = "o" if longest <= 30 else None  # with few epochs, dots show where the data points are

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for group, curve in curves:
        if curve is None:  # still listed, so a failed setting does not silently vanish from the figure
            ax.plot([], [], " ", color="none", label=f"{group.label}: no epochs logged ({status_counts(group.runs)})")
            continue
        seeds = sum(1 for run in group.runs if len(run.steps))
        (line,) = ax.plot(curve.steps, curve.mean, marker=marker, markersize=3,
                          label=f"{group.label} ({seeds} seed{'s' if seeds != 1 else ''})")
        ax.fill_between(curve.steps, curve.mean - curve.std, curve.mean + curve.std,
                        color=line.get_color(), alpha=0.2, linewidth=0)
    env_id = common_value([run for group in groups for run in group.runs], "env.id")
    ax.set_title(f"TRPO learning curves{f' on {env_id}' if env_id else ''}: mean ± std over seeds")
    ax.set_xlabel("environment steps (TotalEnvInteracts)")
    ax.set_ylabel("average episode return (AverageEpRet, undiscounted)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    if longest == 0:
        ax.text(0.5, 0.5, "no run has logged an epoch yet", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------
# Command line


def collect_runs(dirs: Sequence[Path]) -> list[Run]:
    """Every run under the given dirs, each read once even if two dirs overlap."""
    seen: set[Path] = set()
    runs = []
    for root in dirs:
        for path in find_run_dirs(root):
            if path.resolve() not in seen:
                seen.add(path.resolve())
                runs.append(read_run(path))
    return runs


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m trpo.compare",
        description="Compare runs of launch.py: group them by the config values that differ (seeds pooled), "
        f"write {PNG_NAME} (learning curves) and {MD_NAME} (summary) into the first DIR, print the summary.",
    )
    parser.add_argument("dirs", metavar="DIR", nargs="+", type=Path,
                        help="a sweep dir, a run dir, or a dir holding run dirs (e.g. outputs/)")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Returns the exit status: 0, or 2 when a DIR is missing or no run is found."""
    args = parse_args(argv)
    for root in args.dirs:
        if not root.is_dir():
            print(f"error: {root} is not a directory", file=sys.stderr)
            return 2
    runs = collect_runs(args.dirs)
    if not runs:
        where = " ".join(str(d) for d in args.dirs)
        print(f"error: no runs found under {where} (expected progress.csv files written by launch.py)",
              file=sys.stderr)
        return 2
    groups = group_runs(runs)
    out_dir = args.dirs[0]
    report = markdown_report(groups, out_dir)
    (out_dir / MD_NAME).write_text(f"# Comparison of {len(runs)} runs\n\n" + report)
    plot_curves(groups, out_dir / PNG_NAME)
    print(report)
    print(f"wrote {out_dir / PNG_NAME} and {out_dir / MD_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
