"""task=eval: a saved run's policy scored with deterministic episodes, eval.json, MP4 videos, W&B, one-line refusals."""

from __future__ import annotations

import json
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from tests.conftest import (
    TINY,
    assert_one_line_refusal,
    compose_config,
    final_eval_ep_ret,
    inspect_wandb,
    launch,
    read_rows,
    wandb_runs,
    without_wall_clock,
)
from trpo.checkpoint import CheckpointError, load_checkpoint
from trpo.config import ConfigError
from trpo.envs import make_env
from trpo.normalization import ObservationNormalizer
from trpo.evaluation import (
    deterministic_action,
    EVAL_SEED_OFFSET,
    RenderingError,
    choose_mujoco_gl,
    evaluate,
    evaluate_checkpoint,
    frozen_obs_normalizer,
    load_trained_policy,
    trained_config,
    uses_mujoco,
)
from trpo.networks import BetaPolicy, make_policy
from trpo.runner import RunIdentity, Runner

TRAIN = [*TINY, "logger.mode=disabled", "sampler.workers=0"]  # eval.episodes=2 at the end of training
PRINTED = re.compile(r"^EvalEpRet (-?\d+\.\d\d) ± (\d+\.\d\d) over (\d+) episodes?$", re.MULTILINE)


def train(run_dir: Path, *overrides: str) -> Path:
    result = launch([*overrides, *TRAIN, f"hydra.run.dir={run_dir}"])
    assert result.returncode == 0, result.stderr
    return run_dir


def run_eval(run_dir: Path | str, out: Path, *overrides: str):
    return launch(["task=eval", f"checkpoint={run_dir}", "logger.mode=disabled", *overrides, f"hydra.run.dir={out}"])


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory) -> dict[str, Path]:
    """A CartPole run, a MuJoCo run whose episodes are at most 10 steps (quick to film), one whose env was made
    with env.kwargs (HalfCheetah-v5 observing its x position too: 18 numbers) and normalised observations, a
    Beta policy on Pendulum (actions in [-2, 2]), and a seed-3 run whose actions were not clipped, trained side
    by side."""
    root = tmp_path_factory.mktemp("trained")
    jobs = {
        "cartpole": ["env=cartpole"],
        "pendulum": ["env=inverted_pendulum", "env.max_ep_len=10"],
        "cheetah": [
            "env=halfcheetah",
            "env.max_ep_len=10",
            "+env.kwargs.exclude_current_positions_from_observation=false",
            "sampler.normalize_obs=true",
        ],
        "beta": ["env=pendulum", "env.max_ep_len=50", "policy.distribution=beta"],
        "unclipped": ["env=inverted_pendulum", "env.max_ep_len=10", "seed=3", "sampler.clip_actions=false"],
    }
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {name: pool.submit(train, root / name, *overrides) for name, overrides in jobs.items()}
    return {name: future.result() for name, future in futures.items()}


@pytest.fixture(scope="module")
def cartpole_run(trained_runs: dict[str, Path]) -> Path:
    return trained_runs["cartpole"]


@pytest.fixture(scope="module")
def pendulum_run(trained_runs: dict[str, Path]) -> Path:
    return trained_runs["pendulum"]


def loaded_cartpole_policy(run_dir: Path):
    env = make_env("CartPole-v1", 500)
    policy = make_policy(env.observation_space, env.action_space, [64, 64], "tanh", -0.5)
    policy.load_state_dict(load_checkpoint(run_dir)["policy"])
    return policy


# ---------------------------------------------------------------------------------------------------------------
# The command


def test_eval_prints_and_writes_the_same_returns_each_time(cartpole_run: Path, tmp_path: Path) -> None:
    """eval.episodes=3 prints mean ± std, eval.json holds the 3 returns; a second run (given the checkpoint file
    itself) gives the same numbers, and so does evaluate() on the loaded policy in this process. The first two
    episodes are the training run's final evaluation (same seeds, same policy). seed=7 on the command line is used."""
    commands = {
        "first": (cartpole_run, "eval.episodes=3"),
        "again": (cartpole_run / "checkpoint.pt", "eval.episodes=3"),
        "seed7": (cartpole_run, "eval.episodes=2", "seed=7"),
    }
    with ThreadPoolExecutor(len(commands)) as pool:
        futures = {name: pool.submit(run_eval, args[0], tmp_path / name, *args[1:]) for name, args in commands.items()}
    results = {}
    for name, future in futures.items():
        result = future.result()
        assert result.returncode == 0, result.stderr
        [(mean, std, n)] = PRINTED.findall(result.stdout)
        data = json.loads((tmp_path / name / "eval.json").read_text())
        assert int(n) == data["episodes"] == len(data["returns"]) == len(data["lengths"])
        assert float(mean) == pytest.approx(np.mean(data["returns"]), abs=0.005)
        assert float(std) == pytest.approx(np.std(data["returns"]), abs=0.005)
        assert data["mean"] == pytest.approx(np.mean(data["returns"]))
        assert data["std"] == pytest.approx(np.std(data["returns"]))
        assert data["checkpoint"] == str((cartpole_run / "checkpoint.pt").resolve())
        assert data["epoch"] == 2 and data["env_id"] == "CartPole-v1" and data["videos"] == []
        assert data["lengths"] == [int(r) for r in data["returns"]]  # CartPole: reward 1 per step
        results[name] = data
    assert len(results["first"]["returns"]) == 3
    assert results["first"]["returns"] == results["again"]["returns"]
    assert results["first"]["seed"] == 0 and results["seed7"]["seed"] == 7

    policy = loaded_cartpole_policy(cartpole_run)
    assert evaluate(policy, "CartPole-v1", 500, 3, 0 + EVAL_SEED_OFFSET) == results["first"]["returns"]
    assert evaluate(policy, "CartPole-v1", 500, 2, 7 + EVAL_SEED_OFFSET) == results["seed7"]["returns"]
    assert final_eval_ep_ret(cartpole_run) == pytest.approx(np.mean(results["first"]["returns"][:2]))


def test_eval_video_writes_readable_mp4s_and_a_wandb_eval_run(pendulum_run: Path, tmp_path: Path) -> None:
    """eval.video=true writes one MP4 per episode, length + 1 frames each (the reset, then every step), without
    changing the returns; the W&B run is job_type=eval and holds the returns and the videos."""
    import imageio.v3 as iio

    try:
        choose_mujoco_gl(dict(os.environ))
    except RenderingError as error:
        pytest.skip(str(error))
    out = tmp_path / "eval"
    result = run_eval(pendulum_run, out, "eval.episodes=2", "eval.video=true", "logger.mode=offline")
    assert result.returncode == 0, result.stderr
    data = json.loads((out / "eval.json").read_text())
    assert data["videos"] == ["videos/episode-0.mp4", "videos/episode-1.mp4"]
    assert all(1 <= n <= 10 for n in data["lengths"])
    for video, length in zip(data["videos"], data["lengths"]):
        path = out / video
        assert path.stat().st_size > 0
        frames = iio.imread(path)
        assert frames.shape[0] == length + 1 and frames.shape[-1] == 3
        assert frames.max() > 0  # not a black screen
    assert final_eval_ep_ret(pendulum_run) == pytest.approx(data["mean"])  # same 2 episodes as in training

    [wandb_file] = wandb_runs(out)
    [run] = [r["run"] for r in inspect_wandb(wandb_file, summary=False) if r["type"] == "run"]
    assert run["job_type"] == "eval"
    logged = inspect_wandb(wandb_file, summary=True)
    assert logged["summary"]["EvalEpRet"] == pytest.approx(data["mean"])
    assert logged["summary"]["video/episode-1"]["_type"] == "video-file"
    assert len(list(wandb_file.parent.glob("files/media/videos/**/*.mp4"))) == 2


def test_eval_freq_evaluates_during_training_and_leaves_training_unchanged(tmp_path: Path) -> None:
    """eval.freq=2 over 5 epochs adds EvalEpRet after epochs 2 and 4 (and at the end, as always); every other
    column is what the run without it logged, so the evaluations draw no random numbers and feed nothing back,
    with the observation normaliser (frozen in them) and the value fit in its child process beside them."""
    common = ["env=inverted_pendulum", "epochs=5", "sampler.normalize_obs=true", "sampler.normalize_rewards=true"]
    jobs = {"plain": [], "evaluated": ["eval.freq=2", "overlap_value_fit=true"]}
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {
            name: pool.submit(launch, [*TRAIN, *common, *extra, f"hydra.run.dir={tmp_path / name}"])
            for name, extra in jobs.items()
        }
    for future in futures.values():
        assert future.result().returncode == 0, future.result().stderr
    plain, evaluated = (read_rows(tmp_path / name) for name in jobs)
    assert [bool(row["EvalEpRet"]) for row in evaluated] == [False, True, False, True, True]
    assert [bool(row["EvalEpRet"]) for row in plain] == [False, False, False, False, True]
    assert without_wall_clock(evaluated)[-1] == without_wall_clock(plain)[-1]  # the final EvalEpRet too
    def training_columns(rows: list[dict[str, str]]) -> list[dict[str, str]]:
        return [{k: v for k, v in row.items() if k != "EvalEpRet"} for row in without_wall_clock(rows)]

    assert training_columns(evaluated) == training_columns(plain)


def test_eval_freq_must_not_be_negative(tmp_path: Path) -> None:
    assert_one_line_refusal(launch(["eval.freq=-1", *TRAIN, f"hydra.run.dir={tmp_path}"]), "eval.freq=-1", ">= 0")


def test_eval_of_a_dir_without_checkpoint_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = run_eval(tmp_path / "empty", tmp_path / "eval")
    assert_one_line_refusal(result, "no checkpoint", str(tmp_path / "empty"))
    assert (tmp_path / "eval" / "error.txt").exists() and not (tmp_path / "eval" / "eval.json").exists()


def test_eval_of_a_corrupt_checkpoint_is_one_line_naming_the_file(cartpole_run: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(cartpole_run, broken)
    path = broken / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:10])
    assert_one_line_refusal(run_eval(broken, tmp_path / "eval"), str(path), "corrupt")


def test_no_working_gl_backend_is_a_one_line_config_error() -> None:
    """No usable headless OpenGL (here: PyOpenGL forced onto GLX, which neither egl nor osmesa accepts): a
    RenderingError, which run_from_hydra reports as one line (exit 2) since it is a ConfigError."""
    environ = {k: v for k, v in os.environ.items() if k != "MUJOCO_GL"} | {"PYOPENGL_PLATFORM": "glx"}
    with pytest.raises(RenderingError) as caught:
        choose_mujoco_gl(environ)
    message = str(caught.value)
    assert "\n" not in message and isinstance(caught.value, ConfigError)
    for fragment in ("MUJOCO_GL=egl", "MUJOCO_GL=osmesa", "libegl-mesa0", "libosmesa6", "unset PYOPENGL_PLATFORM"):
        assert fragment in message
    assert "MUJOCO_GL" not in environ


# ---------------------------------------------------------------------------------------------------------------
# In-process pieces


def test_eval_makes_the_env_with_the_runs_env_kwargs(trained_runs: dict[str, Path], tmp_path: Path) -> None:
    """The policy of a run trained with env.kwargs sees 18 numbers; task=eval makes its env with the same kwargs
    (from the run's saved config, not the command line), so the policy loads and scores the training run's final
    evaluation again."""
    run_dir = trained_runs["cheetah"]
    first_layer = next(w for w in load_checkpoint(run_dir)["policy"].values() if w.ndim == 2)
    assert first_layer.shape[1] == 18
    result = run_eval(run_dir, tmp_path / "eval", "eval.episodes=2")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["mean"] == pytest.approx(
        final_eval_ep_ret(run_dir)
    )


def test_load_trained_policy_plays_the_runs_final_evaluation_again(trained_runs: dict[str, Path]) -> None:
    """A hand-written episode loop with the loaded policy (its env made with the run's kwargs, its observations
    through the run's frozen normaliser, its actions clipped) scores each run's final EvalEpRet again, from the run
    dir or its checkpoint file; a batch of observations gives a batch of actions inside the bounds."""
    runs = (
        ("cheetah", trained_runs["cheetah"]),
        ("cartpole", trained_runs["cartpole"] / "checkpoint.pt"),
        ("beta", trained_runs["beta"]),
    )
    for name, path in runs:
        trained = load_trained_policy(path)
        assert trained.epoch == 2 and (trained.obs_filter is not None) == (name == "cheetah")
        assert isinstance(trained.policy, BetaPolicy) == (name == "beta")
        env = make_env(trained.env_id, trained.max_ep_len, make_kwargs=trained.make_kwargs)
        returns = []
        for i in range(2):  # TRAIN's eval.episodes, seeded as the Runner seeds them (seed 0)
            obs, _ = env.reset(seed=EVAL_SEED_OFFSET + i)
            total, done = 0.0, False
            while not done:
                obs, reward, terminated, truncated, _ = env.step(trained(obs))
                total, done = total + float(reward), terminated or truncated
            returns.append(total)
        assert np.mean(returns) == pytest.approx(final_eval_ep_ret(path if path.is_dir() else path.parent))
    cheetah = load_trained_policy(trained_runs["cheetah"])
    with torch.no_grad():
        cheetah.policy.mean_net[-1].weight.mul_(1000)  # means far outside the action box [-1, 1]
    actions = cheetah(np.random.default_rng(0).standard_normal((5, 18)))
    assert actions.shape == (5, 6) and np.all(np.abs(actions) <= 1.0) and (np.abs(actions) == 1.0).any()


def test_eval_takes_the_seed_and_the_action_clipping_of_the_trained_run(
    trained_runs: dict[str, Path], tmp_path: Path
) -> None:
    """Without seed= on the command line, task=eval seeds its episodes with the run's own seed (3 here), and a run
    trained with sampler.clip_actions=false is evaluated unclipped: its final EvalEpRet is played again."""
    run_dir = trained_runs["unclipped"]
    assert load_trained_policy(run_dir).clip_actions is False
    result = run_eval(run_dir, tmp_path / "eval", "eval.episodes=2")
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert data["seed"] == 3
    assert data["mean"] == pytest.approx(final_eval_ep_ret(run_dir))


def test_eval_refuses_a_checkpoint_from_another_env_or_without_config(cartpole_run: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(cartpole_run, other)
    config = other / ".hydra" / "config.yaml"
    config.write_text(config.read_text().replace("CartPole-v1", "Acrobot-v1"))
    cfg = compose_config(["task=eval", f"checkpoint={other}", "logger.mode=disabled"])
    with pytest.raises(CheckpointError, match="env.id='CartPole-v1'.*env.id='Acrobot-v1'"):
        evaluate_checkpoint(cfg, tmp_path / "eval")
    shutil.rmtree(other / ".hydra")
    with pytest.raises(CheckpointError, match="config.yaml"):
        trained_config(other)


def test_evaluate_hooks_see_every_episode_and_leave_returns_unchanged() -> None:
    torch.manual_seed(0)
    env = make_env("CartPole-v1", 50)
    policy = make_policy(env.observation_space, env.action_space, [8], "tanh", -0.5)
    ended: list[tuple[int, float, int]] = []
    seen: list[np.ndarray] = []

    def identity(obs: np.ndarray) -> np.ndarray:
        seen.append(obs)
        return obs

    plain = evaluate(policy, "CartPole-v1", 50, 3, 5)
    hooked = evaluate(policy, "CartPole-v1", 50, 3, 5, on_episode_end=lambda *e: ended.append(e), obs_filter=identity)
    assert hooked == plain
    assert [e[0] for e in ended] == [0, 1, 2] and [e[1] for e in ended] == plain
    assert sum(e[2] for e in ended) == len(seen)


def test_frozen_obs_normalizer() -> None:
    """Evaluation applies the checkpoint's normaliser exactly as training left it, and never updates it."""
    source = Path("run/checkpoint.pt")
    assert frozen_obs_normalizer(None, source) is None
    trained = ObservationNormalizer((2,))
    trained.update(np.array([[1.0, -1.0], [3.0, 0.0], [5.0, 4.0]]))
    normalize = frozen_obs_normalizer(trained.state_dict(), source)
    obs = np.array([[3.0, 1.0], [100.0, -100.0]])
    np.testing.assert_array_equal(normalize(obs), trained(obs))
    expected = np.clip((obs - trained.stats.mean) / np.sqrt(trained.stats.var + 1e-8), -10, 10)
    np.testing.assert_allclose(normalize(obs), expected, rtol=1e-6)
    normalize(np.full((5, 2), 50.0))
    np.testing.assert_array_equal(normalize(obs), trained(obs))  # frozen: calling it changed nothing
    with pytest.raises(CheckpointError, match="obs_normalizer"):
        frozen_obs_normalizer({"running_sum": 1.0}, source)


def test_evaluation_episodes_are_seeded_apart_from_the_training_envs(tmp_path: Path, monkeypatch) -> None:
    """Every seeded reset of a run: its training envs take seed + i, its evaluation episodes seed + offset + i."""
    seeds: list[int] = []
    real_reset = gym.Env.reset

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            seeds.append(seed)
        return real_reset(self, seed=seed, options=options)

    monkeypatch.setattr(gym.Env, "reset", reset)
    cfg = compose_config(["env=cartpole", *TINY, "seed=3", "sampler.num_envs=2", "logger.mode=disabled"])
    Runner(cfg, RunIdentity(tmp_path)).run()
    assert seeds == [3, 4, 3 + EVAL_SEED_OFFSET, 4 + EVAL_SEED_OFFSET]


def test_env_kinds() -> None:
    assert uses_mujoco("Hopper-v5") and uses_mujoco("InvertedPendulum-v5")
    assert not uses_mujoco("CartPole-v1") and not uses_mujoco("Pendulum-v1")


@pytest.mark.parametrize("clip_actions", [True, False])
def test_evaluation_clips_actions_only_where_training_did(clip_actions: bool) -> None:
    """Reacher's actions are bounded by 1; a mean of 5 reaches the env as 1 only with sampler.clip_actions=true,
    and Reacher charges the action it is given (-|a|^2 a step), so the return shows which one it got."""
    env = make_env("Reacher-v5", 5)
    policy = make_policy(env.observation_space, env.action_space, [4], "tanh", -0.5)
    with torch.no_grad():
        policy.mean_net[-1].bias.fill_(5.0)
        policy.mean_net[-1].weight.zero_()
    obs, _ = env.reset(seed=0)
    action = deterministic_action(policy, obs, None, env.action_space, clip_actions)
    assert action.tolist() == pytest.approx([1.0, 1.0] if clip_actions else [5.0, 5.0])
    (total,) = evaluate(policy, "Reacher-v5", 5, 1, 0, clip_actions=clip_actions)
    control_cost = 5 * float(np.sum(action**2))
    assert -control_cost - 5 * 0.5 < total < -control_cost  # plus 5 steps of distance cost, each below 0.5
