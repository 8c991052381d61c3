"""``make results-sb3``: the results issue's first anchor, sb3-contrib's TRPO at rl-baselines3-zoo's tuned settings,
rerun here on as many seeds as asked, so that its spread over seeds can be set beside this project's presets.

    python -m trpo.baseline --tasks walker2d --seeds 0,1,2,3 [--jobs 2] [--out-dir outputs/results/sb3]

The anchor in ``docs/results.md`` is quoted on seeds 0, 1, 2 only. Each run here is written as a run dir that
:mod:`trpo.compare` and :mod:`trpo.results` read like this project's own (``<out-dir>/<task>/<seed>``):

- ``.hydra/config.yaml``: the settings below, ``env.id``, ``seed`` and ``epochs`` (rollouts planned);
- ``progress.csv``: per rollout of ``n_envs * n_steps`` = 2,048 env steps, ``TotalEnvInteracts`` and
  ``AverageEpRet`` (the mean return of the training episodes that ended in it), and on the last row ``EvalEpRet``:
  the final policy's deterministic evaluation, the mean of 10 episodes with the observation statistics frozen.

Runs take 488 rollouts, 999,424 env steps, as the presets do (sb3's ``learn(1e6)`` would finish its 489th rollout,
past 1M). A run dir that already holds a final ``EvalEpRet`` is not trained again. Needs sb3-contrib
(``make install-bench``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from trpo.compare import read_run
from trpo.results import ROOT, SB3_DIR, TASKS

# Task preset -> Gymnasium id: the results report's tasks.
ENV_IDS = {task: env_id for task, (env_id, _) in TASKS.items()}

# rl-baselines3-zoo's hyperparams/trpo.yml for the MuJoCo tasks (its "mujoco-defaults", tuned on the -v4 tasks):
# 2 envs of 1,024 steps, observations and rewards normalised by VecNormalize, 16 critic minibatches of 128 over 20
# passes, and sb3-contrib's defaults for the rest (KL limit 0.01, initial log-std 0, 64 x 64 tanh networks).
# sb3-contrib averages the KL over action dimensions, where this project sums it: its target_kl is a limit of
# target_kl x action dimensions in optimizer.delta's units, its damping as many times larger (docs/trpo.md, 2.1).
ZOO_SETTINGS: dict[str, Any] = {
    "n_envs": 2,
    "normalize": True,
    "n_steps": 1024,
    "batch_size": 128,
    "gamma": 0.99,
    "gae_lambda": 0.95,
    "sub_sampling_factor": 1,
    "cg_max_steps": 25,
    "cg_damping": 0.1,
    "n_critic_updates": 20,
    "learning_rate": 1e-3,
    "target_kl": 0.01,
}
ZOO_TASK_SETTINGS: dict[str, dict[str, Any]] = {"halfcheetah": {"target_kl": 0.04}}
EPOCHS = 488  # rollouts of 2,048 steps: 999,424 env steps
EVAL_EPISODES = 10


def settings_for(task: str) -> dict[str, Any]:
    return {**ZOO_SETTINGS, **ZOO_TASK_SETTINGS.get(task, {})}


def run_config(task: str, seed: int, epochs: int) -> dict[str, Any]:
    """What the run dir's ``.hydra/config.yaml`` holds: enough for :mod:`trpo.compare` to group and label runs."""
    settings = settings_for(task)
    return {"algo": "sb3-contrib TRPO, rl-zoo settings", "env": {"id": ENV_IDS[task]}, "seed": seed,
            "epochs": epochs, "steps_per_epoch": settings["n_envs"] * settings["n_steps"], "sb3": settings}


def is_finished(task: str, seed: int, out_dir: Path, epochs: int) -> bool:
    """Whether ``out_dir/task/seed`` holds a finished run of these settings and length (one of other settings, or
    a shorter test run, is trained again)."""
    run_dir = out_dir / task / str(seed)
    config = run_dir / ".hydra" / "config.yaml"
    if not (run_dir / "progress.csv").is_file() or not config.is_file():
        return False
    same = yaml.safe_load(config.read_text()) == run_config(task, seed, epochs)
    return same and read_run(run_dir).eval_return is not None


def train_and_evaluate(task: str, seed: int, out_dir: Path, epochs: int = EPOCHS) -> dict[str, Any]:
    """Train sb3-contrib's TRPO at :func:`settings_for` ``task`` for ``epochs`` rollouts, evaluate the final policy,
    and write the run dir ``out_dir/task/seed``; returns a summary."""
    # Imported here, in the worker: a parent process without torch forks cheaply and safely.
    import torch
    from sb3_contrib import TRPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import VecNormalize, sync_envs_normalization

    from trpo.evaluation import EVAL_SEED_OFFSET

    torch.set_num_threads(1)  # as the project's jobs do, so two runs share the two cores
    settings = settings_for(task)
    run_dir = out_dir / task / str(seed)
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    for stale in ("error.txt", "progress.csv"):  # an earlier run's, which a stopped rerun must not leave behind
        (run_dir / stale).unlink(missing_ok=True)
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(run_config(task, seed, epochs), sort_keys=False))

    class RolloutLog(BaseCallback):
        """One row per rollout: env steps so far and the mean return of the episodes that ended in it."""

        def __init__(self) -> None:
            super().__init__()
            self.rows: list[dict[str, float]] = []
            self.ended: list[float] = []

        def _on_step(self) -> bool:
            self.ended += [info["episode"]["r"] for info in self.locals["infos"] if "episode" in info]
            return True

        def _on_rollout_end(self) -> None:
            average = sum(self.ended) / len(self.ended) if self.ended else math.nan
            self.rows.append({"Epoch": len(self.rows), "TotalEnvInteracts": self.num_timesteps,
                              "AverageEpRet": average})
            self.ended = []

    n_envs, normalize = settings["n_envs"], settings["normalize"]
    algo_kwargs = {k: v for k, v in settings.items() if k not in ("n_envs", "normalize")}
    env = make_vec_env(ENV_IDS[task], n_envs=n_envs, seed=seed)
    if normalize:
        env = VecNormalize(env, gamma=settings["gamma"])
    model = TRPO("MlpPolicy", env, seed=seed, device="cpu", **algo_kwargs)
    log = RolloutLog()
    started = time.perf_counter()
    model.learn(total_timesteps=epochs * n_envs * settings["n_steps"], callback=log)
    seconds = time.perf_counter() - started

    # The Runner's base evaluation seed; sb3 seeds the first reset only, so later episodes do not match its seeds.
    eval_env = make_vec_env(ENV_IDS[task], n_envs=1, seed=seed + EVAL_SEED_OFFSET)
    if normalize:
        eval_env = VecNormalize(eval_env, training=False, norm_reward=False, gamma=settings["gamma"])
        sync_envs_normalization(env, eval_env)  # the training env's observation statistics, frozen
    returns, _ = evaluate_policy(model, eval_env, n_eval_episodes=EVAL_EPISODES, deterministic=True,
                                 return_episode_rewards=True)
    eval_return = float(sum(returns) / len(returns))
    env.close()
    eval_env.close()

    rows = [{**row, "EvalEpRet": ""} for row in log.rows]
    rows[-1]["EvalEpRet"] = eval_return
    with open(run_dir / "progress.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["Epoch", "TotalEnvInteracts", "AverageEpRet", "EvalEpRet"])
        writer.writeheader()
        writer.writerows(rows)
    return {"task": task, "seed": seed, "EvalEpRet": eval_return, "episodes": [float(r) for r in returns],
            "seconds": round(seconds, 1)}


def train_or_record_error(task: str, seed: int, out_dir: Path, epochs: int) -> dict[str, Any]:
    """:func:`train_and_evaluate`, or, where it raises, the error written to the run dir's ``error.txt`` (which
    :mod:`trpo.compare` reports as a failed run) and returned, so the other runs go on."""
    try:
        return train_and_evaluate(task, seed, out_dir, epochs)
    except Exception as error:
        run_dir = out_dir / task / str(seed)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "error.txt").write_text(f"{type(error).__name__}: {error}\n\n{traceback.format_exc()}")
        return {"task": task, "seed": seed, "error": f"{type(error).__name__}: {error}"}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(ENV_IDS), help="comma-separated: halfcheetah,hopper,walker2d")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="rollouts of 2,048 env steps per run (>= 1)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "outputs" / "results" / SB3_DIR)
    args = parser.parse_args(argv)
    tasks = args.tasks.split(",")
    if unknown := sorted(set(tasks) - set(ENV_IDS)):
        parser.error(f"unknown tasks {unknown}; choose from {sorted(ENV_IDS)}")
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    todo = [(task, int(seed)) for task in tasks for seed in args.seeds.split(",")]
    todo = [(task, seed) for task, seed in todo if not is_finished(task, seed, args.out_dir, args.epochs)]
    failed = 0
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(train_or_record_error, task, seed, args.out_dir, args.epochs) for task, seed in todo]
        for future in futures:
            summary = future.result()
            failed += "error" in summary
            print(json.dumps(summary), flush=True)
    if failed:
        print(f"{failed} of {len(todo)} runs failed: see error.txt in their run dirs", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
