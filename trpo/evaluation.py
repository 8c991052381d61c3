"""Deterministic evaluation of a trained policy, and ``task=eval``: score (and film) a saved run's policy.

``python launch.py task=eval checkpoint=RUN_DIR eval.episodes=N [eval.video=true]`` loads ``RUN_DIR``'s checkpoint,
rebuilds its policy from the trained run's own config (``RUN_DIR/.hydra/config.yaml``: env, ``max_ep_len``, network
shape), plays ``N`` deterministic episodes seeded as the Runner's final evaluation, prints the mean return, writes
``eval.json`` (and ``videos/episode-<i>.mp4``) into the eval command's own output dir, and logs a W&B run of
``job_type="eval"``. In Python, :func:`load_trained_policy` gives the same policy as a callable, for an episode
loop of one's own.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import gymnasium as gym
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from trpo.checkpoint import CHECKPOINT_NAME, CheckpointError, check_compatible, load_checkpoint
from trpo.config import ConfigError, env_kwargs, training_keys
from trpo.envs import make_env
from trpo.normalization import ObservationNormalizer
from trpo.networks import Policy, make_policy

# Seeds of evaluation episodes are offset so they never replay a training episode's start.
EVAL_SEED_OFFSET = 1_000_000

EVAL_FILE = "eval.json"
VIDEO_DIR = "videos"
# Headless OpenGL backends for MuJoCo, tried in this order when MUJOCO_GL is unset.
MUJOCO_GL_BACKENDS = ("egl", "osmesa")
RENDERING_HINT = (
    "install Debian's libegl-mesa0 (MUJOCO_GL=egl) or libosmesa6 (MUJOCO_GL=osmesa), "
    "e.g. `apt-get install -y libegl-mesa0`"
)

FrameCallback = Callable[[int, np.ndarray], None]
EpisodeEndCallback = Callable[[int, float, int], None]
ObsFilter = Callable[[np.ndarray], np.ndarray]


class RenderingError(ConfigError):
    """``eval.video=true`` cannot be honoured on this machine; the message says what is missing and what to
    install. A :class:`ConfigError`, so ``run_from_hydra`` reports it as one line and exits with status 2."""


def deterministic_action(
    policy: Policy, obs: np.ndarray, obs_filter: Optional[ObsFilter], action_space: gym.Space, clip_actions: bool
) -> np.ndarray:
    """The action evaluation takes at ``obs`` (one observation or a batch): the policy's deterministic action on
    the filtered observation, clipped to the bounds of a ``Box`` action space if ``clip_actions`` (the run's
    ``sampler.clip_actions``), as the env steps were in training."""
    policy_obs = obs_filter(obs) if obs_filter is not None else obs
    with torch.no_grad():
        action = policy.deterministic_action(torch.as_tensor(policy_obs, dtype=torch.float32)).numpy()
    if clip_actions and isinstance(action_space, gym.spaces.Box):
        action = np.clip(action, action_space.low, action_space.high)
    return action


def evaluate(
    policy: Policy,
    env_id: str,
    max_ep_len: int,
    episodes: int,
    seed: int,
    *,
    on_frame: Optional[FrameCallback] = None,
    on_episode_end: Optional[EpisodeEndCallback] = None,
    obs_filter: Optional[ObsFilter] = None,
    make_kwargs: Optional[dict[str, Any]] = None,
    clip_actions: bool = True,
) -> list[float]:
    """Undiscounted returns of ``episodes`` episodes acting with the policy's deterministic action (the
    Gaussian's mean, the Beta's mean stretched to the box, the Categorical's most likely class); episode ``i`` is
    seeded with ``seed + i``.

    Optional hooks, none of which changes the returns: ``on_frame(i, rgb)`` gets the rendered frame after the reset
    and after every step of episode ``i`` (so ``length + 1`` frames; the env is made with ``render_mode="rgb_array"``
    only then); ``on_episode_end(i, return, length)`` is called as each episode ends; ``obs_filter`` maps each
    observation before the policy sees it (a frozen observation normaliser). ``make_kwargs`` go to the env's
    constructor, as the run's ``env.kwargs`` did in training; ``clip_actions`` is the run's
    ``sampler.clip_actions``.
    """
    render_mode = "rgb_array" if on_frame is not None else None
    env = make_env(env_id, max_ep_len, render_mode, make_kwargs)
    try:
        returns = []
        for i in range(episodes):
            obs, _ = env.reset(seed=seed + i)
            if on_frame is not None:
                on_frame(i, env.render())
            done, total, length = False, 0.0, 0
            while not done:
                action = deterministic_action(policy, obs, obs_filter, env.action_space, clip_actions)
                obs, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                length += 1
                done = terminated or truncated
                if on_frame is not None:
                    on_frame(i, env.render())
            returns.append(total)
            if on_episode_end is not None:
                on_episode_end(i, total, length)
    finally:
        env.close()  # frees a renderer's GL context now, not in a destructor at interpreter exit
    return returns


# ----------------------------------------------------------------------------------------------------------------
# task=eval


def evaluate_checkpoint(cfg: DictConfig, job_dir: Path) -> float:
    """``task=eval``: evaluate the policy saved in ``cfg.checkpoint`` (a run dir) for ``cfg.eval.episodes``
    deterministic episodes; write ``eval.json`` (and videos) into ``job_dir``; return the mean return.

    Raises :class:`CheckpointError` for a missing, corrupt or mismatched checkpoint or run config, and
    :class:`RenderingError` when ``eval.video=true`` cannot render or encode here.
    """
    job_dir = Path(job_dir)
    run_dir, checkpoint, trained = _read_trained_run(cfg.checkpoint)

    videos: Optional[EpisodeVideos] = None
    if cfg.eval.video:
        _check_video_writer()
        if uses_mujoco(trained.env.id):  # before the env is made: importing mujoco already reads MUJOCO_GL
            choose_mujoco_gl()

    torch.set_num_threads(cfg.torch_threads)
    loaded = _trained_policy(run_dir, checkpoint, trained)
    env_id, max_ep_len = loaded.env_id, loaded.max_ep_len
    # The trained run's seed, as its final evaluation used, unless seed=... is given to this command.
    seed = cfg.seed if _given_on_command_line("seed") else int(trained.seed)
    if cfg.eval.video:
        videos = EpisodeVideos(job_dir / VIDEO_DIR, loaded.render_fps)
    lengths: list[int] = []

    def episode_end(i: int, total: float, length: int) -> None:
        lengths.append(length)
        if videos is not None:
            videos.end(i)

    try:
        returns = evaluate(
            loaded.policy,
            env_id,
            max_ep_len,
            cfg.eval.episodes,
            seed + EVAL_SEED_OFFSET,
            on_frame=videos.frame if videos is not None else None,
            on_episode_end=episode_end,
            obs_filter=loaded.obs_filter,
            make_kwargs=loaded.make_kwargs,
            clip_actions=loaded.clip_actions,
        )
    except gym.error.DependencyNotInstalled as error:  # e.g. classic-control envs render with pygame
        raise RenderingError(f"eval.video=true: {env_id} cannot render here: {error}") from None
    finally:
        if videos is not None:
            videos.close()

    mean, std = float(np.mean(returns)), float(np.std(returns))
    result = {
        "checkpoint": str((run_dir / CHECKPOINT_NAME).resolve()),
        "epoch": loaded.epoch,
        "env_id": env_id,
        "max_ep_len": max_ep_len,
        "seed": seed,
        "episodes": len(returns),
        "returns": returns,
        "lengths": lengths,
        "mean": mean,
        "std": std,
        "videos": [str(p.relative_to(job_dir)) for p in videos.paths] if videos is not None else [],
    }
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / EVAL_FILE).write_text(json.dumps(result, indent=2) + "\n")
    plural = "s" if len(returns) != 1 else ""
    print(f"EvalEpRet {mean:.2f} ± {std:.2f} over {len(returns)} episode{plural}", flush=True)
    wrote = f"wrote {job_dir / EVAL_FILE}"
    if videos is not None:
        wrote += f" and {len(videos.paths)} video{'s' if len(videos.paths) != 1 else ''} in {videos.directory}"
    print(wrote)
    if cfg.logger.mode != "disabled":
        _log_to_wandb(cfg, trained, run_dir, checkpoint, job_dir, result)
    return mean


@dataclass
class TrainedPolicy:
    """A run's saved policy (a finished run's final one), acting as the run's evaluation did: call it with an
    observation of the env (or a batch of them) for the action; ``make_env(p.env_id, p.max_ep_len,
    make_kwargs=p.make_kwargs)`` makes the env it was trained on.
    """

    policy: Policy
    obs_filter: Optional[ObsFilter]  # the run's observation normaliser, frozen; None if it trained without one
    action_space: gym.Space
    clip_actions: bool  # the run's sampler.clip_actions: Box actions clipped to their bounds before env.step
    env_id: str
    max_ep_len: int
    make_kwargs: dict[str, Any]
    render_fps: int
    epoch: int  # the epochs the saved policy was trained for

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return deterministic_action(self.policy, obs, self.obs_filter, self.action_space, self.clip_actions)


def load_trained_policy(run_dir: str | Path) -> TrainedPolicy:
    """The policy saved in ``run_dir`` (a run's directory, or its ``checkpoint.pt``), rebuilt from the run's own
    config, as ``task=eval`` plays it.

    Raises :class:`CheckpointError` for a missing, corrupt or mismatched checkpoint or run config.
    """
    return _trained_policy(*_read_trained_run(run_dir))


def _read_trained_run(run_dir: str | Path) -> tuple[Path, dict[str, Any], DictConfig]:
    """The run dir, its checkpoint and its config, checked against each other."""
    run_dir = Path(run_dir)
    if run_dir.name == CHECKPOINT_NAME and run_dir.is_file():  # RUN_DIR/checkpoint.pt works too
        run_dir = run_dir.parent
    checkpoint = load_checkpoint(run_dir)
    trained = trained_config(run_dir)
    check_compatible(checkpoint, training_keys(trained))
    return run_dir, checkpoint, trained


def _trained_policy(run_dir: Path, checkpoint: dict[str, Any], trained: DictConfig) -> TrainedPolicy:
    env_id, max_ep_len, make_kwargs = trained.env.id, int(trained.env.max_ep_len), env_kwargs(trained)
    env = make_env(env_id, max_ep_len, make_kwargs=make_kwargs)
    policy = make_policy(env.observation_space, env.action_space, **trained.policy)
    render_fps = int(env.metadata.get("render_fps") or 30)
    env.close()
    try:
        policy.load_state_dict(checkpoint["policy"])
    except (KeyError, RuntimeError) as error:
        raise CheckpointError(
            f"checkpoint {run_dir / CHECKPOINT_NAME} holds no policy that fits {env_id} with "
            f"policy={OmegaConf.to_container(trained.policy)} ({type(error).__name__})"
        ) from None
    return TrainedPolicy(
        policy=policy,
        obs_filter=frozen_obs_normalizer(checkpoint.get("obs_normalizer"), run_dir / CHECKPOINT_NAME),
        action_space=env.action_space,
        clip_actions=bool(trained.sampler.get("clip_actions", True)),
        env_id=env_id,
        max_ep_len=max_ep_len,
        make_kwargs=make_kwargs,
        render_fps=render_fps,
        epoch=int(checkpoint["epoch"]),
    )


def trained_config(run_dir: Path) -> DictConfig:
    """The trained run's own config (``RUN_DIR/.hydra/config.yaml``), checked for the keys evaluation needs."""
    path = Path(run_dir) / ".hydra" / "config.yaml"
    if not path.is_file():
        raise CheckpointError(
            f"{run_dir} has a checkpoint but no {path.relative_to(run_dir)}: its env and policy are unknown"
        )
    try:
        trained = OmegaConf.load(path)
    except Exception as error:
        raise CheckpointError(f"the trained run's config {path} is unreadable ({type(error).__name__})") from None
    for key in ("env.id", "env.max_ep_len", "policy.hidden_sizes", "policy.activation", "seed"):
        if OmegaConf.select(trained, key, default=None, throw_on_missing=False) is None:
            raise CheckpointError(f"the trained run's config {path} has no {key}")
    return trained


def frozen_obs_normalizer(state: Any, source: Path) -> Optional[ObsFilter]:
    """The checkpoint's observation normaliser, applied frozen (its statistics no longer updated), or None if the
    run trained without one."""
    if state is None:
        return None
    normalizer = ObservationNormalizer(np.shape(state.get("mean", [])) if isinstance(state, dict) else ())
    try:
        normalizer.load_state_dict(state)
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"checkpoint {source} has an obs_normalizer that evaluation cannot apply") from None
    return normalizer


# ----------------------------------------------------------------------------------------------------------------
# Video


class EpisodeVideos:
    """``on_frame``/``end`` hooks for :func:`evaluate` writing episode ``i`` to ``directory/episode-<i>.mp4``."""

    def __init__(self, directory: Path, fps: int):
        self.directory = Path(directory)
        self.fps = fps
        self.paths: list[Path] = []
        self._writers: dict[int, Any] = {}

    def frame(self, episode: int, frame: np.ndarray) -> None:
        writer = self._writers.get(episode)
        if writer is None:
            import imageio.v2 as imageio

            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / f"episode-{episode}.mp4"
            # macro_block_size=2: H.264 needs even sizes only; frames are not rescaled to multiples of 16.
            writer = imageio.get_writer(
                path, fps=self.fps, codec="libx264", macro_block_size=2, ffmpeg_log_level="error"
            )
            self._writers[episode] = writer
            self.paths.append(path)
        writer.append_data(np.asarray(frame, dtype=np.uint8))

    def end(self, episode: int) -> None:
        writer = self._writers.pop(episode, None)
        if writer is not None:
            writer.close()

    def close(self) -> None:
        for episode in list(self._writers):
            self.end(episode)


def _check_video_writer() -> None:
    try:
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as error:
        raise RenderingError(
            f"eval.video=true needs imageio-ffmpeg to write MP4s ({type(error).__name__}: {error}); "
            "reinstall the project's pinned dependencies (make install)"
        ) from None


def uses_mujoco(env_id: str) -> bool:
    """Whether ``env_id`` is a MuJoCo env, told from its registration without importing mujoco."""
    try:
        entry_point = gym.spec(env_id).entry_point
    except gym.error.Error:
        return False
    module = entry_point.split(":")[0] if isinstance(entry_point, str) else getattr(entry_point, "__module__", "")
    return "mujoco" in module.split(".")


# Renders one frame of a one-geom model: the GL library, its context and MuJoCo's renderer all work. A failure is
# printed as one line; os._exit skips the destructors of half-made GL objects, which would only add noise.
_GL_PROBE = """
import os, sys
try:
    import mujoco
    model = mujoco.MjModel.from_xml_string("<mujoco><worldbody><geom size='0.1'/></worldbody></mujoco>")
    renderer = mujoco.Renderer(model, 16, 16)
    renderer.update_scene(mujoco.MjData(model))
    assert renderer.render().shape == (16, 16, 3), "rendered no image"
    renderer.close()
except BaseException as error:
    print(" ".join(f"{type(error).__name__}: {error}".split()), flush=True)
    os._exit(1)
"""


def choose_mujoco_gl(environ: Optional[dict] = None) -> str:
    """Pick the headless OpenGL backend MuJoCo renders with and set ``MUJOCO_GL`` to it.

    A ``MUJOCO_GL`` already set is kept if it works; otherwise ``egl`` then ``osmesa`` are tried. Each is tried in a
    subprocess: PyOpenGL binds one platform per process, so a failed try here would spoil the next one. gymnasium
    reads ``MUJOCO_GL`` when it creates a renderer's GL context, so this must run before the first ``render()``.
    Raises :class:`RenderingError` naming what failed and what to install.
    """
    environ = os.environ if environ is None else environ
    logging.getLogger("OpenGL").setLevel(logging.WARNING)  # not PyOpenGL's INFO line about OpenGL_accelerate
    requested = environ.get("MUJOCO_GL", "").strip()
    candidates = [requested] if requested else list(MUJOCO_GL_BACKENDS)
    failures = []
    for backend in candidates:
        problem = _probe_gl(backend, environ)
        if problem is None:
            environ["MUJOCO_GL"] = backend
            return backend
        failures.append(f"MUJOCO_GL={backend}: {problem}")
    preset = [k for k in ("MUJOCO_GL", "PYOPENGL_PLATFORM") if environ.get(k)]
    unset = f" (or unset {' and '.join(preset)} to let evaluation choose)" if preset else ""
    raise RenderingError(
        f"eval.video=true cannot render MuJoCo without a display ({'; '.join(failures)}); {RENDERING_HINT}{unset}"
    )


def _probe_gl(backend: str, environ) -> Optional[str]:
    """None if MuJoCo renders with ``backend`` in a fresh process, else the last line of what went wrong."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", _GL_PROBE],
            env={**environ, "MUJOCO_GL": backend},
            capture_output=True,
            text=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        return "timed out"
    if done.returncode == 0:
        return None
    lines = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    last = lines[0] if done.stdout.strip() else (lines[-1] if lines else f"exit status {done.returncode}")
    return last if len(last) <= 160 else last[:157] + "..."


# ----------------------------------------------------------------------------------------------------------------
# Helpers


def _given_on_command_line(key: str) -> bool:
    """Whether ``key=...`` was among this Hydra job's overrides (False outside a Hydra job)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = HydraConfig.get().overrides.task
    except Exception:
        return False
    return any(o.split("=", 1)[0].lstrip("+~") == key for o in overrides)


def _log_to_wandb(
    cfg: DictConfig, trained: DictConfig, run_dir: Path, checkpoint: dict, job_dir: Path, result: dict
) -> None:
    """One W&B run of ``job_type="eval"`` in the trained run's group: the returns' mean and std, and the videos."""
    import wandb

    from trpo.loggers import WandbLogger

    try:
        config = OmegaConf.to_container(trained, resolve=True)
    except Exception:
        config = OmegaConf.to_container(trained, resolve=False)
    config.update(
        task="eval",
        checkpoint=str(run_dir),
        eval=OmegaConf.to_container(cfg.eval, resolve=True),
        logger=OmegaConf.to_container(cfg.logger, resolve=True),
    )
    identity = checkpoint.get("identity") or {}
    logger = WandbLogger(
        job_dir,
        config,
        mode=cfg.logger.mode,
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        group=cfg.logger.group or identity.get("group"),
        tags=cfg.logger.tags,
        name=f"eval-{identity.get('name') or run_dir.name}",
        job_type="eval",
    )
    row: dict[str, Any] = {"Epoch": result["epoch"], "EvalEpRet": result["mean"], "EvalEpRetStd": result["std"]}
    for i, video in enumerate(result["videos"]):
        row[f"video/episode-{i}"] = wandb.Video(str(job_dir / video), caption=f"return {result['returns'][i]:.2f}")
    logger.log(row)
    logger.summary({"EvalEpRet": result["mean"], "EvalEpRetStd": result["std"], "EvalReturns": result["returns"]})
    logger.close(0)
