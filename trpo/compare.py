"""Compare runs: `python -m trpo.compare DIR [DIR ...]` -> learning curves and a summary table.

Each DIR is a sweep dir (``launch.py -m``), a single run dir, or any dir holding run dirs (``outputs/``).
A run is a dir with ``progress.csv`` and/or ``.hydra/config.yaml`` (not that of a ``task=eval`` or ``resume=`` job,
which trains nothing in its own dir); a run with ``error.txt`` is listed as failed.

Runs are grouped by the config values that differ between them, with the seed pooled: the flattened configs
of all runs are compared key by key (numbers by value: ``20`` is ``20.0``), keys that never change what is learned
(:data:`IGNORED_KEYS`, ``logger.*``) are dropped, and runs that agree on the remaining differing keys form one group,
labelled like ``optimizer.delta=0.05``. Runs that differ by a config group choice (``optimizer=trpo`` vs
``optimizer=vpg``) are labelled by the update rule's name instead, like ``TRPO`` or ``VPG pi_lr=0.01``
(see :func:`group_labels`), and runs of different ``experiment=`` presets by the overrides they were launched
with, like ``experiment=walker2d`` against ``experiment=mujoco env=walker2d`` (see :func:`preset_labels`;
``compare.md`` then lists each group's differing config values too).

Into the first DIR (or ``--out-dir``) it writes ``compare.png`` (AverageEpRet against env steps, per group
the mean over seeds with a +-std band, plus one panel per ``--panels`` key) and ``compare.md`` (when, where
and by which command it was made; one row per group, with a column per ``--metrics`` key; one row per run),
and prints the same tables. ``--name`` renames both files, ``--title`` replaces the figure's title. E.g.::

    python -m trpo.compare outputs/sweeps/delta --metrics KL,BacktrackIters,Time --panels KL \\
        --out-dir docs/figures --name trpo_delta --title "TRPO on Hopper-v5: KL limit delta"

Std is numpy's default, the population std over runs (ddof=0), so a group of one run has std 0.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import shlex
import sys
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

# Keys that never change what a run learns, so they never split runs into groups: the seed is pooled, and the
# rest change only when it saves, evaluates or records video, or where its work runs (the same numbers).
IGNORED_KEYS = ("seed", "save_freq", "eval.freq", "eval.video", "overlap_value_fit", "sampler.workers")
IGNORED_PREFIXES = ("logger.",)

# Subdirectories that never hold runs; skipping them keeps the search fast (W&B dirs hold many files).
SKIPPED_DIRS = ("wandb", ".hydra")

DEFAULT_NAME = "compare"
PNG_NAME = f"{DEFAULT_NAME}.png"
MD_NAME = f"{DEFAULT_NAME}.md"

# The config groups' options (conf/optimizer/trpo.yaml, ...): the defaults that labels leave out.
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

# progress.csv columns that are 0 or 1 per epoch: --metrics shows them as a percentage of epochs.
INDICATOR_KEYS = ("KLExceeded", "SurrogateWorse")

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
    columns: dict[str, np.ndarray] = field(default_factory=dict)  # every progress.csv column, one value per epoch
    overrides: Optional[tuple[str, ...]] = None  # .hydra/overrides.yaml: the command line's overrides, as typed

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

    def column(self, key: str) -> np.ndarray:
        """The per-epoch values of a progress.csv column; all NaN when the run's file lacks it."""
        if key == "AverageEpRet":
            return self.returns
        return self.columns.get(key, np.full(len(self.steps), np.nan))


@dataclass
class Group:
    """Runs that share every config value that differs between runs, except the seed."""

    label: str
    runs: list[Run] = field(default_factory=list)
    config_label: Optional[str] = None  # the differing config values, where the label is the launch overrides


@dataclass
class Curve:
    """A group's learning curve: mean and std over its runs at each env step all of them reached."""

    steps: np.ndarray
    mean: np.ndarray
    std: np.ndarray


# ---------------------------------------------------------------------------------------------------------
# Finding and reading runs


def is_job_dir(path: Path) -> bool:
    """A job dir holds progress.csv (a run that logged an epoch) or .hydra/config.yaml (any launched job)."""
    return (path / "progress.csv").is_file() or (path / ".hydra" / "config.yaml").is_file()


def is_run_dir(path: Path) -> bool:
    """A job dir that trained, or tried to train, in itself: not a ``task=eval`` job, nor a ``resume=`` job, whose
    training goes on in the run dir it resumed."""
    if (path / "progress.csv").is_file():
        return True
    config = read_config(path)
    return config is not None and config.get("task", "train") == "train" and config.get("resume") is None


def find_run_dirs(root: Path) -> list[Path]:
    """Every run dir at or under ``root``, sorted; the search does not go inside a job dir."""
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        path = Path(dirpath)
        if is_job_dir(path):
            if is_run_dir(path):
                found.append(path)
            dirnames[:] = []  # a job dir holds no further runs
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


def read_yaml_flat(file: Path) -> Optional[Flat]:
    """A YAML file flattened, interpolations resolved where they can be; None if missing or unreadable."""
    from omegaconf import OmegaConf

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


def read_config(path: Path) -> Optional[Flat]:
    """The flattened, resolved ``.hydra/config.yaml`` of a run; None if it is missing or unreadable."""
    return read_yaml_flat(path / ".hydra" / "config.yaml")


def to_float(text: Optional[str]) -> float:
    """A CSV cell as a float; an empty or malformed cell is NaN."""
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def read_table(path: Path) -> dict[str, np.ndarray]:
    """Every column of ``progress.csv`` as floats, one value per epoch (empty cells NaN); {} without a file.

    Rows without a step count (e.g. a line half-written while the run is going) are skipped.
    """
    file = path / "progress.csv"
    if not file.is_file():
        return {}
    rows: list[dict[str, float]] = []
    with open(file, newline="") as f:
        reader = csv.DictReader(f)
        names = [name for name in reader.fieldnames or [] if name]
        for row in reader:
            step = to_float(row.get("TotalEnvInteracts"))
            if math.isnan(step):
                continue
            rows.append({name: to_float(row.get(name)) for name in names})
    return {name: np.array([row[name] for row in rows], dtype=float) for name in names}


def split_table(table: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, Optional[float]]:
    """(TotalEnvInteracts, AverageEpRet, EvalEpRet of the last row) of a :func:`read_table` table."""
    steps = table.get("TotalEnvInteracts", np.array([], dtype=float))
    returns = table.get("AverageEpRet", np.full(len(steps), np.nan))
    evaluated = table.get("EvalEpRet", np.array([], dtype=float))
    eval_return = float(evaluated[-1]) if len(evaluated) and math.isfinite(evaluated[-1]) else None
    return steps, returns, eval_return


def read_overrides(path: Path) -> Optional[tuple[str, ...]]:
    """The overrides the run was launched with (``.hydra/overrides.yaml``); None if missing or unreadable."""
    import yaml

    try:
        overrides = yaml.safe_load((path / ".hydra" / "overrides.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return tuple(map(str, overrides)) if isinstance(overrides, list) else None


def read_error(path: Path) -> Optional[str]:
    """The first non-empty line of ``error.txt``, or None when the run has no error file."""
    file = path / "error.txt"
    if not file.is_file():
        return None
    lines = [line.strip() for line in file.read_text(errors="replace").splitlines() if line.strip()]
    return lines[0] if lines else "(error.txt is empty)"


def read_run(path: Path) -> Run:
    """Everything :class:`Run` holds about the run dir ``path``."""
    table = read_table(path)
    steps, returns, eval_return = split_table(table)
    run = Run(path, read_config(path), steps, returns, eval_return, read_error(path), table, read_overrides(path))
    if run.epochs_planned is not None and len(steps) < run.epochs_planned:
        run.eval_return = None  # an unfinished run's last EvalEpRet is one of eval.freq's, not the final evaluation
    return run


# ---------------------------------------------------------------------------------------------------------
# Grouping


def is_ignored(key: str) -> bool:
    return key in IGNORED_KEYS or key.startswith(IGNORED_PREFIXES)


_MISSING = "<missing>"
_TARGET = "._target_"


def differing_keys(configs: Sequence[Flat]) -> list[str]:
    """The config keys whose value is not the same in every config (a key absent somewhere counts; ``20`` and
    ``20.0`` are the same), sorted, without the keys that never matter (:data:`IGNORED_KEYS`, ``logger.*``)."""
    keys = sorted({key for config in configs for key in config})
    return [
        key
        for key in keys
        if not is_ignored(key) and len({value_key(config.get(key, _MISSING)) for config in configs}) > 1
    ]


def value_key(value: Any) -> str:
    """A config value as grouping compares it: numbers by value (``1`` is ``1.0``), others, bools among them, by
    ``repr``."""
    return repr(float(value)) if is_number(value) else repr(value)


def is_number(value: Any) -> bool:
    """An int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
    if is_number(value):
        return (0, float(value), "")
    return (1, 0.0, format_value(value))


def same_value(a: Any, b: Any) -> bool:
    """Config values equal as one would read them: ``1`` equals ``1.0``; ``true`` is not ``1``."""
    return value_key(a) == value_key(b)


def plain_label(config: Flat, keys: Sequence[str]) -> str:
    """``optimizer.delta=0.05, policy.hidden_sizes=[32, 32]``: every differing key; ``all runs`` for none."""
    return ", ".join(f"{key}={format_value(config.get(key, _MISSING))}" for key in keys) or "all runs"


def short_target(target: str) -> str:
    """``trpo.updates.TRPO`` -> ``TRPO``: the class (or function) name of a ``_target_``."""
    return target.rsplit(".", 1)[-1]


@lru_cache(maxsize=None)
def option_defaults(conf_group_dir: Path) -> dict[str, Flat]:
    """The options of a config group (``conf/optimizer/*.yaml``) by their ``_target_``, keys flattened."""
    options: dict[str, Flat] = {}
    for file in sorted(conf_group_dir.glob("*.yaml")) if conf_group_dir.is_dir() else []:
        flat = read_yaml_flat(file)
        if flat is not None and isinstance(flat.get("_target_"), str):
            options.setdefault(flat["_target_"], flat)
    return options


def switched_groups(configs: Sequence[Flat], keys: Sequence[str]) -> list[str]:
    """Config groups chosen differently between runs: ``optimizer`` when ``optimizer._target_`` differs.

    Only groups whose ``_target_`` every config has, as text, count; others keep plain labels.
    """
    return [
        key[: -len(_TARGET)]
        for key in keys
        if key.endswith(_TARGET) and all(isinstance(config.get(key), str) for config in configs)
    ]


def shown_option_keys(config: Flat, configs: Sequence[Flat], keys: Sequence[str], prefix: str,
                      conf_dir: Path) -> list[str]:
    """The differing ``prefix.*`` keys worth naming next to the option's name in ``config``'s label.

    A key is named when the run has it and either (a) it varies between the runs that chose the same option
    (the same ``_target_``), so it tells those groups apart, or (b) the run's value is not the option's
    default in ``conf_dir/<prefix>/*.yaml`` (a key the default file lacks counts as not default). Keys that
    differ only because the options differ (TRPO's ``delta`` vs VPG's ``pi_lr``) are left out. Without the
    option's file, (b) never holds: a value shared by all runs of the option is taken as the option's own.
    """
    target = config[prefix + _TARGET]
    same_option = [c for c in configs if c.get(prefix + _TARGET) == target]
    defaults = option_defaults(conf_dir / prefix.replace(".", "/")).get(target)
    shown = []
    for key in keys:
        if not key.startswith(prefix + ".") or key == prefix + _TARGET or key not in config:
            continue
        varies = len({repr(c.get(key, _MISSING)) for c in same_option}) > 1
        leaf = key[len(prefix) + 1:]
        not_default = defaults is not None and not same_value(defaults.get(leaf, _MISSING), config[key])
        if varies or not_default:
            shown.append(key)
    return shown


def option_label(config: Flat, configs: Sequence[Flat], keys: Sequence[str], prefixes: Sequence[str],
                 conf_dir: Path) -> str:
    """A label like ``VPG pi_lr=0.01, env.id=Hopper-v5`` (see :func:`group_labels`)."""
    parts = []
    for prefix in prefixes:
        shown = shown_option_keys(config, configs, keys, prefix, conf_dir)
        settings = [f"{key[len(prefix) + 1:]}={format_value(config[key])}" for key in shown]
        parts.append(" ".join([short_target(config[prefix + _TARGET]), *settings]))
    own = tuple(prefix + "." for prefix in prefixes)
    parts += [f"{key}={format_value(config.get(key, _MISSING))}" for key in keys if not key.startswith(own)]
    return ", ".join(parts)


def group_labels(configs: Sequence[Flat], conf_dir: Path = CONF_DIR) -> list[str]:
    """One label per config (each config standing for one group), telling the groups apart.

    The rule: when every config has a ``_target_`` for a config group (``optimizer._target_``) and the
    targets differ -- runs of ``optimizer=trpo`` vs ``optimizer=vpg`` -- that group's part of the label is the
    target's class name (``TRPO``, ``VPG``, ``NPG``) followed by only those of its differing keys, without
    the ``optimizer.`` prefix, that :func:`shown_option_keys` names: ``VPG pi_lr=0.01``, not every key in
    which VPG's config differs from TRPO's. The other differing keys follow as ``key=value``. Otherwise, and
    should two groups end up with the same label, every differing key is listed as ``key=value``
    (``optimizer.delta=0.05``), or ``all runs`` when none differs.
    """
    keys = differing_keys(configs)
    prefixes = switched_groups(configs, keys)
    plain = [plain_label(config, keys) for config in configs]
    if not prefixes:
        return plain
    labels = [option_label(config, configs, keys, prefixes, conf_dir) for config in configs]
    return labels if len(set(labels)) == len(labels) else plain


def override_key(override: str) -> str:
    """``optimizer.delta`` of ``optimizer.delta=0.02``, ``+env.kwargs.x=1`` and ``~eval``."""
    return override.split("=", 1)[0].lstrip("+~")


def preset_labels(groups: Sequence[Sequence[Run]]) -> Optional[list[str]]:
    """Labels made of the overrides each group was launched with, like ``experiment=walker2d`` against
    ``experiment=mujoco env=walker2d``, where runs chose different ``experiment=`` presets: a preset sets many keys
    at once, and listing them all makes labels a line long. Left out: the overrides every run shares (so a sweep
    within one preset keeps its config labels) and those of keys that never split groups (:data:`IGNORED_KEYS`,
    ``logger.*``, ``hydra.*``); a run with none left is labelled ``no other overrides``. The order in which
    overrides were typed does not matter: a label gives ``experiment=`` first, then the rest sorted. None (label
    by config instead) unless every run's overrides were read, the runs of each group share theirs, and they tell
    the groups apart."""
    overrides = [run.overrides for group in groups for run in group]
    if not overrides or any(run is None for run in overrides):
        return None
    shared = set.intersection(*(set(run) for run in overrides))
    if not any(override_key(o) == "experiment" and o not in shared for run in overrides for o in run):
        return None

    def label_overrides(run: Run) -> frozenset[str]:
        return frozenset(
            o for o in run.overrides
            if o not in shared and not is_ignored(override_key(o)) and not override_key(o).startswith("hydra.")
        )

    per_group = [{label_overrides(run) for run in group} for group in groups]
    if any(len(seen) != 1 for seen in per_group) or len(set.union(*per_group)) != len(groups):
        return None
    return [
        " ".join(sorted(seen.pop(), key=lambda o: (override_key(o) != "experiment", o))) or "no other overrides"
        for seen in per_group
    ]


def group_runs(runs: Sequence[Run], conf_dir: Path = CONF_DIR) -> list[Group]:
    """Split runs into groups by the config values that differ between them, the seed pooled.

    Runs without a readable config cannot be placed, so they form one group of their own. Groups are sorted
    by their values (numbers numerically) and labelled by :func:`preset_labels` where those apply, else by
    :func:`group_labels`. With nothing differing, all runs form one group, "all runs".
    """
    with_config = [run for run in runs if run.config is not None]
    keys = differing_keys([run.config for run in with_config])

    def values(run: Run) -> list[Any]:
        return [run.config.get(key, _MISSING) for key in keys]

    by_values: dict[tuple[str, ...], list[Run]] = {}  # insertion-ordered: sorting the runs first sorts the groups
    for run in sorted(with_config, key=lambda run: [value_sort_key(v) for v in values(run)]):
        by_values.setdefault(tuple(value_key(v) for v in values(run)), []).append(run)
    members = list(by_values.values())
    labels = group_labels([group[0].config for group in members], conf_dir)
    presets = preset_labels(members)
    if presets is None:
        groups = [Group(label, group) for label, group in zip(labels, members)]
    else:
        groups = [Group(preset, group, config_label=label) for preset, label, group in zip(presets, labels, members)]
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


def group_curve(runs: Sequence[Run], key: str = "AverageEpRet") -> Optional[Curve]:
    """Mean and std of a progress.csv column (AverageEpRet unless told) over the group's runs, at each env step.

    Runs of unequal length (one still going, one stopped early) are handled by cutting every run at the steps
    all of them reached, so each point of the curve averages the same runs -- no interpolation, and no mean
    that jumps when a seed drops out. Runs of one group share ``steps_per_epoch``, so their steps coincide; a
    step that some run lacks counts as NaN for that run. NaN values (for returns: epochs in which no episode
    finished; for any column: empty cells) are left out of that step's mean; a step where every run has NaN
    stays NaN (:func:`draw_curve` joins the steps around it).
    """
    logged = [run for run in runs if len(run.steps)]
    if not logged:
        return None
    end = common_steps_reached(logged)
    steps = np.unique(np.concatenate([run.steps[run.steps <= end] for run in logged]))
    table = np.full((len(logged), len(steps)), np.nan)
    for row, run in enumerate(logged):
        keep = run.steps <= end
        table[row, np.searchsorted(steps, run.steps[keep])] = run.column(key)[keep]
    with warnings.catch_warnings():  # all-NaN columns: "Mean of empty slice", the result NaN is intended
        warnings.simplefilter("ignore", RuntimeWarning)
        return Curve(steps, np.nanmean(table, axis=0), np.nanstd(table, axis=0))


def final_return(run: Run, end: int) -> float:
    """A run's last finite AverageEpRet at or before ``end`` env steps; NaN if it has none."""
    finite = np.isfinite(run.returns) & (run.steps <= end)
    return float(run.returns[finite][-1]) if finite.any() else math.nan


@dataclass(frozen=True)
class Metric:
    """One extra column of the group table (``--metrics``): its header and, per run, the values it averages."""

    header: str
    values: Callable[[Run], np.ndarray]  # one value per epoch; NaN where the run logged none
    percent: bool = False  # the values are 0/1 per epoch, shown as a percentage of epochs
    note: str = ""  # what the column means, for the notes under the table


def epoch_seconds(run: Run) -> np.ndarray:
    """Seconds per epoch: SampleTime + UpdateTime where the run logged them, else the increments of the
    cumulative ``Time`` (which also count evaluation, logging and checkpoints)."""
    sample, update = run.column("SampleTime"), run.column("UpdateTime")
    if np.isfinite(sample).any() or np.isfinite(update).any():
        return sample + update
    return np.diff(run.column("Time"), prepend=0.0)


def backtracked(run: Run) -> np.ndarray:
    """Per epoch, 1 if the line search backtracked (BacktrackIters > 0), 0 if not, NaN where not logged."""
    iters = run.column("BacktrackIters")
    return np.where(np.isfinite(iters), (iters > 0).astype(float), np.nan)


def metrics_for(key: str) -> list[Metric]:
    """The group-table columns that ``--metrics KEY`` adds: ``KEY`` itself for most columns, and

    - ``Time``: ``s/epoch``, see :func:`epoch_seconds`;
    - ``KLExceeded``, ``SurrogateWorse`` (0/1 per epoch): ``KEY % of epochs``;
    - ``BacktrackIters``: the mean iterations, and ``backtracked %``, the share of epochs with any.
    """
    def column(run: Run) -> np.ndarray:
        return run.column(key)

    if key == "Time":
        return [Metric("s/epoch", epoch_seconds, note="s/epoch: seconds per epoch, SampleTime + UpdateTime "
                       "(where a run lacks them: the increments of the cumulative Time)")]
    if key in INDICATOR_KEYS:
        header = f"{key} % of epochs"
        return [Metric(header, column, percent=True, note=f"{header}: epochs with {key}=1")]
    if key == "BacktrackIters":
        note = "backtracked %: epochs with BacktrackIters > 0"
        return [Metric(key, column), Metric("backtracked %", backtracked, percent=True, note=note)]
    return [Metric(key, column)]


def metric_stats(metric: Metric, runs: Sequence[Run]) -> tuple[float, float, int]:
    """(mean, std, runs with a value) of a metric over a group, in percent for a 0/1 metric.

    The mean pools every logged epoch of every run (all epochs, not cut at the steps all runs reached); the
    std is over runs, of each run's own mean over its epochs. Empty cells (NaN) count nowhere, so a run that
    never logged the key does not count (VPG has no KLExceeded).
    """
    per_run = [values[np.isfinite(values)] for values in (metric.values(run) for run in runs)]
    per_run = [values for values in per_run if values.size]
    if not per_run:
        return math.nan, math.nan, 0
    scale = 100.0 if metric.percent else 1.0
    mean = float(np.concatenate(per_run).mean()) * scale
    std = float(np.std([values.mean() for values in per_run])) * scale
    return mean, std, len(per_run)


# ---------------------------------------------------------------------------------------------------------
# Output


def format_mean_std(mean: float, std: float, count: int, total: int) -> str:
    """``12.3 ± 4.5``, with ``(n=count)`` when only some of the group's runs contributed; ``–`` for none."""
    if count == 0 or math.isnan(mean):
        return "–"
    text = f"{mean:.2f} ± {std:.2f}"
    return text if count == total else f"{text} (n={count})"


def format_number(value: float) -> str:
    """3 significant digits, and no exponent from 1000 on: ``0.00935``, ``1.23``, ``678``, ``12346``."""
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def metric_cell(metric: Metric, runs: Sequence[Run]) -> str:
    """``0.00935 ± 0.0001``, ``12.5 ± 2.5`` for a percentage, ``(n=k)`` added when only k runs had values,
    ``n/a`` when none had (the column is empty for this kind of run)."""
    mean, std, count = metric_stats(metric, runs)
    if count == 0:
        return "n/a"
    text = f"{mean:.1f} ± {std:.1f}" if metric.percent else f"{format_number(mean)} ± {format_number(std)}"
    return text if count == len(runs) else f"{text} (n={count})"


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


def group_row(group: Group, metrics: Sequence[Metric] = ()) -> list[str]:
    """One group's row: runs, seeds, final returns, steps, status, then one cell per metric."""
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
        *(metric_cell(metric, runs) for metric in metrics),
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


def markdown_report(groups: Sequence[Group], base: Path, metrics: Sequence[Metric] = (),
                    figure: str = PNG_NAME) -> str:
    """Both tables: one row per group (with a column per metric), then one row per run."""
    lines = ["## Groups", ""]
    lines += markdown_table(
        ["group", "runs", "seeds", "final EvalEpRet", "final AverageEpRet", "steps reached", "status",
         *(metric.header for metric in metrics)],
        [group_row(group, metrics) for group in groups],
    )
    lines += [
        "",
        "Mean ± std over the group's runs (population std). EvalEpRet: the deterministic evaluation at the end",
        "of finished runs. AverageEpRet: each run's last value at the steps all runs of the group reached (the",
        f"end of the group's curve in {figure}). `(n=k)`: only k runs had a value. Steps reached: the env",
        "steps every run of the group reached, `(max N)` when some run went further.",
    ]
    if metrics:
        lines += [
            "",
            "Metric columns: the mean over all logged epochs of all the group's runs ± the std over runs of each",
            "run's mean; `n/a`: no run of the group logged the column (e.g. VPG has no KLExceeded).",
            *(f"{metric.note}." for metric in metrics if metric.note),
        ]
    with_config_labels = [group for group in groups if group.config_label is not None]
    if with_config_labels:
        lines += ["", "The groups' launch overrides, and the config values that differ between them:", ""]
        lines += markdown_table(
            ["group", "differing config"], [[group.label, group.config_label] for group in with_config_labels]
        )
    lines += ["", "## Runs", ""]
    lines += markdown_table(
        ["group", "seed", "dir", "steps", "last AverageEpRet", "EvalEpRet", "status"],
        [run_row(group, run, base) for group in groups for run in group.runs],
    )
    return "\n".join(lines) + "\n"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_description() -> str:
    """e.g. ``Linux-6.8.0-x86_64-with-glibc2.39, AMD EPYC 7B13, 2 logical CPUs``."""
    cpus = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus
    count = f"{cpus} logical CPUs" if usable == cpus else f"{usable} of {cpus} logical CPUs usable"
    return f"{platform.platform()}, {cpu_model()}, {count}"


def when_and_where() -> str:
    """e.g. ``2026-11-28 05:17 UTC on Linux-..., AMD EPYC, 2 logical CPUs``: when and where a report is made."""
    return f"{datetime.now().astimezone():%Y-%m-%d %H:%M %Z} on {machine_description()}"


def provenance(argv: Sequence[str]) -> str:
    """The lines saying when, where and by which command the report was made."""
    command = shlex.join(["python", "-m", "trpo.compare", *argv])
    return (
        f"Made {when_and_where()}.\n"
        "(That is where this report was made; its timings come from the machines that ran the runs.)\n\n"
        f"Command:\n\n```sh\n{command}\n```\n"
    )


def common_value(runs: Sequence[Run], key: str) -> Optional[Any]:
    """The value of ``key`` if every run with a config has the same one, else None."""
    values = {repr(run.config.get(key)) for run in runs if run.config is not None}
    if len(values) != 1:
        return None
    return next(run.config.get(key) for run in runs if run.config is not None)


def group_colors(groups: Sequence[Group]) -> list[str]:
    """One colour per group, the same in every panel: matplotlib's default cycle C0, C1, ..."""
    return [f"C{i % 10}" for i in range(len(groups))]


def draw_delta(ax: Any, groups: Sequence[Group], colors: Sequence[str]) -> None:
    """On a KL panel, the KL limit ``optimizer.delta``, dashed: one black line labelled ``delta = ...`` when
    every group that has one delta shares it (VPG has none), else a line in each such group's colour."""
    deltas = [common_value(group.runs, "optimizer.delta") for group in groups]
    deltas = [delta if is_number(delta) else None for delta in deltas]
    distinct = {delta for delta in deltas if delta is not None}
    if len(distinct) == 1:
        [delta] = distinct
        ax.axhline(delta, color="black", linestyle="--", linewidth=1, label=f"delta = {format_value(delta)}")
    elif distinct:
        for delta, color in zip(deltas, colors):
            if delta is not None:
                ax.axhline(delta, color=color, linestyle="--", linewidth=1)
        ax.plot([], [], color="gray", linestyle="--", linewidth=1, label="delta of each group")  # legend only
    if distinct:
        ax.legend(loc="best", fontsize="small")


def draw_curve(ax: Any, curve: Curve, color: str, marker: Optional[str], label: Optional[str] = None) -> None:
    """A group's mean line and its ±std band, through the steps where the mean is finite: with long episodes and
    short epochs (HalfCheetah's 1,000 steps over 16 envs x 128), most epochs end no episode, and a line broken at
    each NaN would leave only isolated points, which draw nothing."""
    finite = np.isfinite(curve.mean)
    steps, mean, std = curve.steps[finite], curve.mean[finite], curve.std[finite]
    ax.plot(steps, mean, color=color, marker=marker, markersize=3, label=label)
    ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)


def draw_panel(ax: Any, groups: Sequence[Group], colors: Sequence[str], key: str, marker: Optional[str]) -> None:
    """One ``--panels`` subplot: the mean ± std over seeds of ``key`` per group, no legend of its own."""
    drawn = False
    for group, color in zip(groups, colors):
        curve = group_curve(group.runs, key)
        if curve is not None and np.isfinite(curve.mean).any():
            draw_curve(ax, curve, color, marker)
            drawn = True
    if key == "KL":
        draw_delta(ax, groups, colors)
    ax.set_ylabel(f"{key} (0/1, mean over seeds)" if key in INDICATOR_KEYS else key)
    ax.grid(alpha=0.3)
    if not drawn:
        ax.text(0.5, 0.5, f"no run logged {key}", ha="center", va="center", transform=ax.transAxes)


def default_title(groups: Sequence[Group]) -> str:
    """``TRPO learning curves on Hopper-v5: mean ± std over seeds``: the update rule's name when all runs
    share one (``TRPO`` when no config names one), plain ``Learning curves`` when they differ."""
    runs = [run for group in groups for run in group.runs]
    env_id = common_value(runs, "env.id")
    target = common_value(runs, "optimizer._target_")
    targets = {run.config.get("optimizer._target_") for run in runs if run.config is not None}
    if isinstance(target, str):
        name = f"{short_target(target)} learning curves"
    else:
        name = "TRPO learning curves" if targets <= {None} else "Learning curves"
    return f"{name}{f' on {env_id}' if env_id else ''}: mean ± std over seeds"


def env_columns(groups: Sequence[Group]) -> list[tuple[Optional[str], list[int]]]:
    """The figure's columns, as (env id, indices of its groups): one per env when every group ran on one env and
    they span several (returns of different tasks share no scale), else a single column of every group."""
    env_ids = [common_value(group.runs, "env.id") for group in groups]
    if len(set(env_ids)) < 2 or not all(isinstance(env_id, str) for env_id in env_ids):
        return [(None, list(range(len(groups))))]
    return [(env_id, [i for i, e in enumerate(env_ids) if e == env_id]) for env_id in sorted(set(env_ids))]


def make_figure(groups: Sequence[Group], panels: Sequence[str] = (), title: Optional[str] = None) -> Any:
    """The learning curves: per group the mean AverageEpRet over seeds, with a ±std band; below them one
    panel per key in ``panels`` (same colours, shared x axis); a column per env where the groups ran on several
    (:func:`env_columns`). ``title`` replaces the default title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [(group, group_curve(group.runs)) for group in groups]
    colors = group_colors(groups)
    longest = max((len(curve.steps) for _, curve in curves if curve is not None), default=0)
    marker = "o" if longest <= 30 else None  # with few epochs, dots show where the data points are
    columns = env_columns(groups)

    fig, axes = plt.subplots(1 + len(panels), len(columns), sharex="col", squeeze=False, dpi=120,
                             figsize=(8 * len(columns), 5 + 2.5 * len(panels)), height_ratios=[2] + [1] * len(panels))
    full_title = default_title(groups) if title is None else title
    for column, (env_id, members) in enumerate(columns):
        ax = axes[0, column]
        for i in members:
            group, curve = curves[i]
            if curve is None:  # still listed, so a failed setting does not silently vanish from the figure
                label = f"{group.label}: no epochs logged ({status_counts(group.runs)})"
                ax.plot([], [], " ", color="none", label=label)
                continue
            seeds = sum(1 for run in group.runs if len(run.steps))
            draw_curve(ax, curve, colors[i], marker, label=f"{group.label} ({seeds} seed{'s' if seeds != 1 else ''})")
        ax.set_title(full_title if env_id is None else env_id)
        ax.set_ylabel("average episode return (AverageEpRet, undiscounted)")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
        if longest == 0:
            ax.text(0.5, 0.5, "no run has logged an epoch yet", ha="center", va="center", transform=ax.transAxes)
        column_groups, column_colors = [groups[i] for i in members], [colors[i] for i in members]
        for key, panel in zip(panels, axes[1:, column]):
            draw_panel(panel, column_groups, column_colors, key, marker)
        axes[-1, column].set_xlabel("environment steps (TotalEnvInteracts)")
    if len(columns) > 1:
        fig.suptitle(full_title)
    fig.tight_layout()
    return fig


def plot_curves(groups: Sequence[Group], path: Path, panels: Sequence[str] = (), title: Optional[str] = None) -> None:
    """Write :func:`make_figure`'s figure to ``path``."""
    fig = make_figure(groups, panels, title)
    import matplotlib.pyplot as plt

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


def key_list(text: str) -> list[str]:
    """``"KL, BacktrackIters"`` -> ``["KL", "BacktrackIters"]``."""
    keys = [key.strip() for key in text.split(",") if key.strip()]
    if not keys:
        raise argparse.ArgumentTypeError("expected KEY[,KEY...], e.g. KL,BacktrackIters")
    return keys


def file_name(text: str) -> str:
    """An output file name without extension; no path separators (``--out-dir`` says where)."""
    if not text or "/" in text or os.sep in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not a plain file name (use --out-dir for the directory)")
    return text


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m trpo.compare",
        description="Compare runs of launch.py: group them by the config values that differ (seeds pooled), "
        f"write {PNG_NAME} (learning curves) and {MD_NAME} (summary) into the first DIR, print the summary.",
    )
    parser.add_argument("dirs", metavar="DIR", nargs="+", type=Path,
                        help="a sweep dir, a run dir, or a dir holding run dirs (e.g. outputs/)")
    parser.add_argument("--metrics", metavar="KEY[,KEY...]", type=key_list, default=[],
                        help="progress.csv columns to add to the group table: per group the mean over all epochs "
                        "of all runs ± std over runs (KLExceeded, SurrogateWorse as %% of epochs; BacktrackIters "
                        "also as 'backtracked %%'; Time as seconds per epoch)")
    parser.add_argument("--panels", metavar="KEY[,KEY...]", type=key_list, default=[],
                        help="progress.csv columns to plot under the returns, one panel each, against env steps "
                        "(a KL panel shows the KL limit delta dashed)")
    parser.add_argument("--name", type=file_name, default=DEFAULT_NAME,
                        help=f"write NAME.png and NAME.md (default: {DEFAULT_NAME})")
    parser.add_argument("--out-dir", type=Path, default=None, metavar="OUT",
                        help="directory for the two files, made if missing (default: the first DIR)")
    parser.add_argument("--title", default=None, help="the figure's title (default: TRPO learning curves on ENV...)")
    return parser.parse_args(argv)


def unknown_keys(runs: Sequence[Run], keys: Sequence[str]) -> list[str]:
    """The keys that are no column of any run's progress.csv (likely typos); none when no run has a file."""
    known = {name for run in runs for name in run.columns}
    return [key for key in keys if known and key not in known]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Returns the exit status: 0, or 2 when a DIR is missing, no run is found, or a KEY is no column."""
    argv = list(sys.argv[1:] if argv is None else argv)
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
    for option, keys in (("--metrics", args.metrics), ("--panels", args.panels)):
        unknown = unknown_keys(runs, keys)
        if unknown:
            known = sorted({name for run in runs for name in run.columns})
            print(f"error: {option} {','.join(unknown)}: no such column in progress.csv "
                  f"(columns: {', '.join(known)})", file=sys.stderr)
            return 2
    groups = group_runs(runs)
    metrics = [metric for key in args.metrics for metric in metrics_for(key)]
    out_dir = args.out_dir if args.out_dir is not None else args.dirs[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    png, md = out_dir / f"{args.name}.png", out_dir / f"{args.name}.md"
    report = markdown_report(groups, args.dirs[0], metrics, figure=png.name)
    md.write_text(f"# Comparison of {len(runs)} runs\n\n{provenance(argv)}\n{report}")
    plot_curves(groups, png, args.panels, args.title)
    print(report)
    print(f"wrote {png} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
