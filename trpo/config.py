"""The typed schema of a run's configuration, and its validation.

Hydra composes ``conf/`` into a plain ``DictConfig``. :func:`validate` checks it against the dataclasses
below -- every key's type, then every number's range -- before anything is built, and raises
:class:`ConfigError` with one line naming the key, the value and what is allowed. The dataclasses hold types and
rules only: every key's value, its default included, comes from ``conf/``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, get_args, get_origin, get_type_hints

from omegaconf import DictConfig, ListConfig, OmegaConf


class ConfigError(ValueError):
    """A configuration value that is refused; its message is the one line a user sees."""


def _rule(check: Callable[[Any], bool], allowed: str) -> dict:
    return {"check": check, "allowed": allowed}


def positive() -> dict:
    return _rule(lambda v: v > 0, "> 0")


def at_least(low: float) -> dict:
    return _rule(lambda v: v >= low, f">= {low}")


def in_open_interval(low: float, high: float) -> dict:
    return _rule(lambda v: low < v < high, f"in ({low}, {high})")


def in_closed_interval(low: float, high: float) -> dict:
    return _rule(lambda v: low <= v <= high, f"in [{low}, {high}]")


def one_of(*choices: str) -> dict:
    return _rule(lambda v: v in choices, "one of " + ", ".join(choices))


@dataclass(kw_only=True)
class EnvConfig:
    id: str
    max_ep_len: int = field(metadata=at_least(1))
    kwargs: dict  # for the env's constructor (gymnasium.make)


@dataclass(kw_only=True)
class PolicyConfig:
    hidden_sizes: list[int]
    activation: str = field(metadata=one_of("tanh", "relu", "elu"))
    init_log_std: float
    ortho_init: bool
    bounded_mean: bool
    distribution: str = field(metadata=one_of("gaussian", "beta"))
    final_log_std: float | None


@dataclass(kw_only=True)
class ValueFitConfig:
    """What every update rule shares: advantage estimation and the value-function fit."""

    lam: float = field(metadata=in_closed_interval(0.0, 1.0))
    gamma: float = field(metadata=in_closed_interval(0.0, 1.0))
    vf_lr: float = field(metadata=positive())
    train_v_iters: int = field(metadata=at_least(0))
    normalize_advantages: bool
    vf_lr_schedule: str = field(metadata=one_of("constant", "linear"))
    vf_minibatches: int = field(metadata=at_least(1))
    vf_target: str = field(metadata=one_of("rewards_to_go", "lambda_returns"))


@dataclass(kw_only=True)
class NPGConfig(ValueFitConfig):
    _target_: str = "trpo.updates.NPG"
    delta: float = field(metadata=positive())
    damping_coeff: float = field(metadata=at_least(0.0))
    cg_iters: int = field(metadata=at_least(1))
    delta_schedule: str = field(metadata=one_of("constant", "linear"))
    natural_lr: Optional[float] = field(metadata=_rule(lambda v: v is None or v > 0, "> 0, or null"))


@dataclass(kw_only=True)
class TRPOConfig(NPGConfig):
    _target_: str = "trpo.updates.TRPO"
    backtrack_iters: int = field(metadata=at_least(1))
    backtrack_coeff: float = field(metadata=in_open_interval(0.0, 1.0))


@dataclass(kw_only=True)
class VPGConfig(ValueFitConfig):
    _target_: str = "trpo.updates.VPG"
    pi_lr: float = field(metadata=positive())
    train_pi_iters: int = field(metadata=at_least(1))


@dataclass(kw_only=True)
class WandbConfig:
    mode: str = field(metadata=one_of("offline", "online", "disabled"))
    project: str
    entity: Optional[str]
    group: Optional[str]
    tags: list[str]


@dataclass(kw_only=True)
class SamplerConfig:
    num_envs: int = field(metadata=at_least(1))
    workers: int = field(metadata=at_least(0))
    clip_actions: bool
    normalize_obs: bool
    normalize_rewards: bool


@dataclass(kw_only=True)
class EvalConfig:
    episodes: int = field(metadata=at_least(1))
    freq: int = field(metadata=at_least(0))
    video: bool


@dataclass(kw_only=True)
class Config:
    env: EnvConfig
    policy: PolicyConfig
    optimizer: Any  # its schema depends on the update rule: see OPTIMIZER_SCHEMAS
    logger: WandbConfig
    sampler: SamplerConfig
    eval: EvalConfig
    seed: int = field(metadata=at_least(0))
    epochs: int = field(metadata=at_least(1))
    steps_per_epoch: int = field(metadata=at_least(1))
    save_freq: int = field(metadata=at_least(1))
    device: str = field(metadata=one_of("cpu"))  # refuses device=cuda with one line: training runs on the CPU
    torch_threads: int = field(metadata=at_least(1))
    overlap_value_fit: bool
    task: str = field(metadata=one_of("train", "eval"))
    resume: Optional[str]
    checkpoint: Optional[str]


# Each update rule's schema, found by its ``_target_``.
OPTIMIZER_SCHEMAS: dict[str, type] = {schema._target_: schema for schema in (TRPOConfig, NPGConfig, VPGConfig)}


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is list:
        return f"a list of {get_args(annotation)[0].__name__}"
    if origin is not None:  # Optional[X]
        return f"{_type_name(get_args(annotation)[0])} or null"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a section of keys"}[
        annotation
    ]


def _conforms(value: Any, annotation: Any) -> bool:
    origin = get_origin(annotation)
    if origin is list:
        return isinstance(value, (list, ListConfig)) and all(_conforms(v, get_args(annotation)[0]) for v in value)
    if origin is not None:  # Optional[X]
        return value is None or _conforms(value, get_args(annotation)[0])
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def _check_section(section: Any, schema: type, prefix: str) -> None:
    if not isinstance(section, (dict, DictConfig)):
        raise ConfigError(f"{prefix.rstrip('.')}={section!r} is not allowed: expected a section of keys")
    hints = get_type_hints(schema)
    known = {f.name: f for f in dataclasses.fields(schema)}
    for key in section:
        if key not in known:
            raise ConfigError(f"{prefix}{key} is not a known key (allowed: {', '.join(sorted(known))})")
    for name, spec in known.items():
        key = prefix + name
        if name not in section:
            raise ConfigError(f"{key} is missing")
        value = section[name]
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            _check_section(value, annotation, key + ".")
            continue
        if annotation is Any:
            continue
        if not _conforms(value, annotation):
            raise ConfigError(f"{key}={value!r} is not allowed: expected {_type_name(annotation)}")
        rule = spec.metadata
        if rule and not rule["check"](value):
            raise ConfigError(f"{key}={value!r} is not allowed: must be {rule['allowed']}")


def validate(cfg: DictConfig) -> None:
    """Check every key of a composed config; raise :class:`ConfigError` on the first bad one."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    target = plain.get("optimizer", {}).get("_target_") if isinstance(plain.get("optimizer"), dict) else None
    if target not in OPTIMIZER_SCHEMAS:
        raise ConfigError(
            f"optimizer._target_={target!r} is not allowed: must be one of {', '.join(OPTIMIZER_SCHEMAS)}"
        )
    _check_section(plain, Config, "")
    _check_section(plain["optimizer"], OPTIMIZER_SCHEMAS[target], "optimizer.")
    if any(not isinstance(h, int) or h < 1 for h in plain["policy"]["hidden_sizes"]):
        raise ConfigError(f"policy.hidden_sizes={plain['policy']['hidden_sizes']} is not allowed: sizes must be >= 1")
    if plain["steps_per_epoch"] % plain["sampler"]["num_envs"]:
        raise ConfigError(
            f"steps_per_epoch={plain['steps_per_epoch']} is not allowed: must be a multiple of "
            f"sampler.num_envs={plain['sampler']['num_envs']}"
        )
    if plain["optimizer"].get("vf_minibatches", 1) > plain["steps_per_epoch"]:
        raise ConfigError(
            f"optimizer.vf_minibatches={plain['optimizer']['vf_minibatches']} is not allowed: more minibatches than "
            f"the batch's steps_per_epoch={plain['steps_per_epoch']} rows"
        )
    if plain["task"] == "eval" and plain["checkpoint"] is None:
        raise ConfigError("checkpoint=None is not allowed with task=eval: give the run dir to evaluate")
    if plain["task"] == "train" and plain["checkpoint"] is not None:
        raise ConfigError(
            f"checkpoint={plain['checkpoint']!r} is not allowed with task=train: it is what task=eval evaluates "
            "(to continue a run, give resume=RUN_DIR)"
        )
    if plain["task"] == "eval" and plain["resume"] is not None:
        raise ConfigError(f"resume={plain['resume']!r} is not allowed with task=eval: give checkpoint=RUN_DIR")
    _check_env_id(plain["env"]["id"])


def env_kwargs(cfg: DictConfig) -> dict:
    """``env.kwargs`` as a plain dict (it travels to env worker processes and into checkpoints); ``{}`` for a run
    saved before the key existed."""
    kwargs = cfg.env.get("kwargs")
    return OmegaConf.to_container(kwargs, resolve=True) if kwargs is not None else {}


def training_keys(cfg: DictConfig) -> dict:
    """The config keys, by their dotted names, that a checkpoint can only be continued or evaluated with: the seed,
    the env, its time limit and its constructor arguments, the whole policy and update rule, how actions are
    clipped, the shape of the batch, and whether observations and rewards are normalised (the networks were trained
    on the normalised ones, and the statistics are in the checkpoint or not). What may change: ``eval.*``, the
    loggers, ``save_freq``, and where the work runs (``torch_threads``, ``overlap_value_fit``,
    ``sampler.workers``); ``epochs`` too where nothing is scheduled over them (see :func:`has_schedule`). A key an
    older config lacks is None here (older checkpoints lack it too, and are not checked on it)."""

    def select(key: str) -> Any:
        return OmegaConf.select(cfg, key, default=None, throw_on_missing=False)

    return {
        "seed": select("seed"),
        "env.id": select("env.id"),
        "env.max_ep_len": select("env.max_ep_len"),
        "env.kwargs": env_kwargs(cfg),
        **{f"policy.{key}": value for key, value in OmegaConf.to_container(cfg.policy, resolve=True).items()},
        **{f"optimizer.{key}": value for key, value in OmegaConf.to_container(cfg.optimizer, resolve=True).items()},
        **{key: select(key) for key in (
            "sampler.num_envs", "sampler.clip_actions", "sampler.normalize_obs", "sampler.normalize_rewards",
            "steps_per_epoch",
        )},
    }


def has_schedule(cfg: DictConfig) -> bool:
    """Whether anything in the run is annealed over its ``epochs`` (the critic's learning rate, the KL limit, the
    Gaussian's log-std): such a run cannot be continued with other ``epochs`` without its schedules jumping."""
    return (
        cfg.policy.get("final_log_std") is not None
        or cfg.optimizer.get("vf_lr_schedule") == "linear"
        or cfg.optimizer.get("delta_schedule") == "linear"
    )


def check_group_options(args: list[str], conf_dir: Path) -> None:
    """Refuse ``group=option`` command-line overrides whose option has no file under ``conf/group/``, with one
    line, before Hydra composes (whose own message for this spans many lines)."""
    groups = {d.name for d in conf_dir.iterdir() if d.is_dir()}
    for arg in args:
        name, sep, value = arg.partition("=")
        name = name.lstrip("+~")
        # choice(), glob() and range() sweeps, whose arguments hold commas too, are left to Hydra.
        if not sep or name not in groups or not value or "(" in value:
            continue
        options = sorted(f.stem for f in (conf_dir / name).glob("*.yaml"))
        for option in value.split(","):  # a sweep (-m) lists options with commas
            if option and option not in options and option != "null":
                raise ConfigError(f"{name}={option!r} is not allowed: must be one of {', '.join(options)}")


def _job_dir(resume: Optional[str], checkpoint: Optional[str], default: str) -> str:
    stamp = Path(default).name
    # Only beside a real run: a mistyped RESUME or CHECKPOINT must not be created by Hydra; its refusal
    # (error.txt) goes to the default dir.
    if resume and (Path(resume) / ".hydra" / "config.yaml").is_file():
        return f"{resume}/resumes/{stamp}"
    if checkpoint:
        run_dir = Path(checkpoint).parent if checkpoint.endswith(".pt") else Path(checkpoint)
        if (run_dir / "checkpoint.pt").is_file():
            return f"{run_dir}/evals/{stamp}"
    return default


def register_resolvers() -> None:
    """``${job_dir:RESUME,CHECKPOINT,DEFAULT}``: where Hydra puts a job's own files. A resumed run writes on in its
    old directory, so the resume command's Hydra files go to ``RUN_DIR/resumes/`` and the run's saved config
    stays; an evaluation writes into ``RUN_DIR/evals/``, beside the run it evaluates."""
    if not OmegaConf.has_resolver("job_dir"):
        OmegaConf.register_new_resolver("job_dir", _job_dir)


def _check_env_id(env_id: str) -> None:
    import gymnasium

    if env_id not in gymnasium.registry:
        close = [k for k in gymnasium.registry if k.lower().startswith(env_id.split("-")[0].lower()[:4])]
        hint = f" (did you mean {', '.join(close[:3])}?)" if close else ""
        raise ConfigError(f"env.id={env_id!r} is not a registered Gymnasium environment{hint}")
