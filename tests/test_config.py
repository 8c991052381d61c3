"""Tests of the Hydra configuration in ``conf/`` and of :func:`trpo.config.validate`.

Configs are composed with Hydra's compose API, as a user's command line would compose them, then validated; every
environment file is also built (Gymnasium env and policy) to prove it names something real.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from hydra.utils import get_class
from omegaconf import OmegaConf

from tests.conftest import CONF_DIR, compose_config
from trpo.compare import flatten
from trpo.config import ConfigError, check_group_options, env_kwargs, has_schedule, validate
from trpo.envs import make_env
from trpo.networks import CategoricalPolicy, GaussianPolicy, make_policy
from trpo.updates import UpdateRule

ENV_FILES = sorted(path.stem for path in (CONF_DIR / "env").glob("*.yaml"))
OPTIMIZER_FILES = sorted(path.stem for path in (CONF_DIR / "optimizer").glob("*.yaml"))
EXPERIMENT_FILES = sorted(path.stem for path in (CONF_DIR / "experiment").glob("*.yaml"))
# Task preset -> what it changes in the general preset ``experiment=mujoco env=<task>`` (its file says why).
TASK_PRESET_CHANGES = {
    "halfcheetah": {"optimizer.delta": 0.01, "optimizer.damping_coeff": 0.1},
    "hopper": {
        "policy.distribution": "gaussian",
        "policy.init_log_std": 0.0,
        "optimizer.gamma": 0.995,
        "optimizer.vf_minibatches": 16,
        "optimizer.delta": 0.02,
        "optimizer.damping_coeff": 0.1,
        "optimizer.vf_target": "lambda_returns",
        "optimizer.natural_lr": None,
    },
    "walker2d": {
        "policy.distribution": "gaussian",
        "policy.final_log_std": -1.0,
        "optimizer.lam": 0.97,
        "optimizer.delta": 0.01,
        "optimizer.damping_coeff": 0.1,
        "optimizer.vf_minibatches": 1,
        "optimizer.natural_lr": None,
    },
    "swimmer": {
        "policy.distribution": "gaussian",
        "optimizer.gamma": 0.995,
        "optimizer.vf_minibatches": 16,
        "optimizer.delta": 0.01,
        "optimizer.damping_coeff": 0.1,
    },
    "humanoid": {"policy.hidden_sizes": (256, 256)},
}


def test_env_files_are_found():
    """The parametrizations below really cover conf/env/ and conf/optimizer/ (an empty list would test nothing)."""
    assert "halfcheetah" in ENV_FILES and "cartpole" in ENV_FILES
    assert "trpo" in OPTIMIZER_FILES


def test_default_config_is_valid():
    """The defaults compose and pass validate, with the documented Spinning Up values."""
    cfg = compose_config()
    validate(cfg)
    assert cfg.env.id == "HalfCheetah-v5"
    assert cfg.optimizer._target_ == "trpo.updates.TRPO"
    assert cfg.optimizer.delta == 0.01
    assert cfg.steps_per_epoch % cfg.sampler.num_envs == 0


@pytest.mark.parametrize(
    "overrides",
    [
        ["optimizer.lam=0", "optimizer.gamma=1"],
        ["optimizer.lam=1.0", "optimizer.gamma=0.0"],
        ["optimizer.damping_coeff=0", "optimizer.train_v_iters=0"],
        ["optimizer.delta=1", "optimizer.vf_lr=1e-5"],
        ["steps_per_epoch=4000", "sampler.num_envs=8"],
        ["steps_per_epoch=32", "sampler.num_envs=2", "optimizer.vf_minibatches=32"],  # minibatches of one row
        ["policy.activation=relu", "policy.hidden_sizes=[8]"],
        ["logger.mode=disabled", "logger.entity=me", "logger.tags=[a,b]"],
    ],
)
def test_boundary_values_are_accepted(overrides):
    """Values at the edge of what is allowed (closed-interval ends, zero where >= 0 is allowed) pass validate."""
    validate(compose_config(overrides))


@pytest.mark.parametrize("env_file", ENV_FILES)
def test_env_file_composes_validates_and_builds(env_file):
    """Each conf/env/*.yaml composes, validates, makes its env with the file's time limit and constructor
    arguments as a run does, and gives the right kind and shape of policy."""
    cfg = compose_config([f"env={env_file}"])
    validate(cfg)
    env = make_env(cfg.env.id, cfg.env.max_ep_len, make_kwargs=env_kwargs(cfg))
    try:
        assert env.spec.max_episode_steps == cfg.env.max_ep_len
        policy = make_policy(env.observation_space, env.action_space, **cfg.policy)
        obs, _ = env.reset(seed=0)
        obs_batch = torch.as_tensor(np.stack([obs, obs]), dtype=torch.float32).reshape(2, -1)
        with torch.no_grad():
            distribution = policy.distribution(obs_batch)
            action = distribution.sample()
        if isinstance(env.action_space, gym.spaces.Box):
            assert isinstance(policy, GaussianPolicy)
            assert distribution.mean.shape == (2, int(np.prod(env.action_space.shape)))
            assert action.shape == (2, *env.action_space.shape)
            step_action = np.clip(action[0].numpy(), env.action_space.low, env.action_space.high)
        else:
            assert isinstance(env.action_space, gym.spaces.Discrete)
            assert isinstance(policy, CategoricalPolicy)
            assert distribution.probs.shape == (2, env.action_space.n)
            assert action.shape == (2,)
            step_action = int(action[0])
        assert distribution.log_prob(action).shape == (2,)
        env.step(step_action)
    finally:
        env.close()


@pytest.mark.parametrize("optimizer_file", OPTIMIZER_FILES)
def test_optimizer_file_composes_validates_and_names_an_update_rule(optimizer_file):
    """Each conf/optimizer/*.yaml composes and validates, and its _target_ is an UpdateRule subclass."""
    cfg = compose_config([f"optimizer={optimizer_file}"])
    validate(cfg)
    assert issubclass(get_class(cfg.optimizer._target_), UpdateRule)


BAD_VALUES = [
    # (overrides, key named in the message, value named in the message)
    (["optimizer.delta=0"], "optimizer.delta", "0"),
    (["optimizer.delta=-0.1"], "optimizer.delta", "-0.1"),
    (["optimizer.delta=abc"], "optimizer.delta", "abc"),
    (["optimizer.delta=nan"], "optimizer.delta", "nan"),
    (["optimizer.backtrack_coeff=0"], "optimizer.backtrack_coeff", "0"),
    (["optimizer.backtrack_coeff=1"], "optimizer.backtrack_coeff", "1"),
    (["optimizer.backtrack_coeff=1.5"], "optimizer.backtrack_coeff", "1.5"),
    (["optimizer.lam=-0.1"], "optimizer.lam", "-0.1"),
    (["optimizer.lam=1.1"], "optimizer.lam", "1.1"),
    (["optimizer.gamma=1.01"], "optimizer.gamma", "1.01"),
    (["optimizer.gamma=-0.5"], "optimizer.gamma", "-0.5"),
    (["optimizer.cg_iters=0"], "optimizer.cg_iters", "0"),
    (["optimizer.cg_iters=2.5"], "optimizer.cg_iters", "2.5"),
    (["optimizer.cg_iters=true"], "optimizer.cg_iters", "True"),
    (["optimizer.vf_lr=0"], "optimizer.vf_lr", "0"),
    (["optimizer.delta=inf"], "optimizer.delta", "inf"),
    (["policy.init_log_std=nan"], "policy.init_log_std", "nan"),
    (["optimizer.damping_coeff=-1"], "optimizer.damping_coeff", "-1"),
    (["epochs=0"], "epochs", "0"),
    (["steps_per_epoch=-5"], "steps_per_epoch", "-5"),
    (["sampler.num_envs=0"], "sampler.num_envs", "0"),
    (["steps_per_epoch=4001", "sampler.num_envs=2"], "steps_per_epoch", "4001"),
    (["env.id=NoSuchEnv-v0"], "env.id", "NoSuchEnv-v0"),
    (["env.max_ep_len=0"], "env.max_ep_len", "0"),
    (["env.kwargs=3"], "env.kwargs", "3"),
    (["policy.activation=sigmoid"], "policy.activation", "sigmoid"),
    (["policy.hidden_sizes=[64,0]"], "policy.hidden_sizes", "[64, 0]"),
    (["logger.mode=sometimes"], "logger.mode", "sometimes"),
    (["+optimizer.learning_rate=0.1"], "optimizer.learning_rate", "learning_rate"),
]


@pytest.mark.parametrize(
    "overrides, key, value", BAD_VALUES, ids=[" ".join(overrides) for overrides, _, _ in BAD_VALUES]
)
def test_bad_value_is_refused_with_one_line_message(overrides, key, value):
    """validate raises ConfigError with a single-line message that names the offending key and value."""
    cfg = compose_config(overrides)
    with pytest.raises(ConfigError) as error:
        validate(cfg)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(key), message
    assert value in message, message


@pytest.mark.parametrize(
    "overrides, scheduled",
    [
        ([], False),
        (["policy.final_log_std=-1.0"], True),
        (["optimizer.vf_lr_schedule=linear"], True),
        (["optimizer.delta_schedule=linear"], True),
    ],
)
def test_has_schedule_names_each_thing_annealed_over_the_epochs(overrides, scheduled):
    """A run with any of the three schedules cannot be continued with other epochs; one with none can."""
    assert has_schedule(compose_config(overrides)) is scheduled


def test_steps_not_multiple_of_num_envs_names_both_keys():
    """The divisibility error names both steps_per_epoch and sampler.num_envs with their values."""
    with pytest.raises(ConfigError, match=r"steps_per_epoch=4001 .*sampler\.num_envs=2"):
        validate(compose_config(["steps_per_epoch=4001", "sampler.num_envs=2"]))


def test_unknown_optimizer_target_is_refused():
    """An update rule with no schema is refused, naming optimizer._target_ and the value given."""
    with pytest.raises(ConfigError, match=r"^optimizer\._target_='trpo\.updates\.PPO'"):
        validate(compose_config(["optimizer._target_=trpo.updates.PPO"]))


@pytest.mark.parametrize("experiment", EXPERIMENT_FILES)
def test_experiment_preset_composes_and_validates(experiment):
    validate(compose_config([f"experiment={experiment}"]))


@pytest.mark.parametrize("task, changes", TASK_PRESET_CHANGES.items())
def test_task_preset_is_the_general_preset_with_only_its_documented_changes(task, changes):
    """The 1M-step task presets stay within the issue's budget of 1M env steps, and differ from the general
    preset on their task in exactly the keys their files explain."""
    preset = flatten(OmegaConf.to_container(compose_config([f"experiment={task}"]), resolve=True))
    general = flatten(OmegaConf.to_container(compose_config(["experiment=mujoco", f"env={task}"]), resolve=True))
    assert {key: value for key, value in preset.items() if general.get(key) != value} == changes
    assert preset["epochs"] * preset["steps_per_epoch"] <= 1_000_000


@pytest.mark.parametrize(
    "args",
    [["optimizer=trpo,npg"], ["optimizer=choice(trpo,npg)"], ["env=glob(*cheetah)"], ["+experiment=mujoco,null"]],
)
def test_group_sweeps_over_real_options_pass_the_early_check(args: list[str]) -> None:
    check_group_options(args, CONF_DIR)


def test_a_misspelt_option_inside_a_group_sweep_is_named() -> None:
    with pytest.raises(ConfigError, match="optimizer='npgg' is not allowed: must be one of npg, trpo, vpg"):
        check_group_options(["-m", "optimizer=trpo,npgg", "optimizer.delta=0.02"], CONF_DIR)
