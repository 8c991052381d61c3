"""Faults a long run meets: non-finite numbers, W&B without network or key, W&B errors mid-run; determinism;
and the breadth of bad input a user can type."""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

import trpo.envs
import trpo.loggers
import trpo.runner
from tests.conftest import (
    TINY,
    Stopped,
    assert_one_line_refusal,
    compose_config,
    inspect_wandb,
    launch,
    read_rows,
    stop_after_checkpoint,
    wandb_runs,
    without_wall_clock,
)
from trpo.buffer import RolloutBuffer
from trpo.checkpoint import load_checkpoint
from trpo.config import ConfigError, validate
from trpo.networks import ValueFunction, make_policy
from trpo.runner import NonFiniteError, RunIdentity, Runner, guarded_policy_step
from trpo.sampler import Sampler
from trpo.value_fit import ChildProcessValueFit, make_value_fit

# 200 lockstep steps of 2 envs per epoch, in this process, so EnvBatch.step can be patched.
CARTPOLE = ["env=cartpole", *TINY, "sampler.num_envs=2", "sampler.workers=0", "logger.mode=disabled"]
STEPS_PER_EPOCH = 200


def state_equal(a, b) -> bool:
    """Bit-for-bit equality of nested state dicts (tensors, numbers, lists)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(state_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(state_equal(x, y) for x, y in zip(a, b))
    return a == b


def snapshot(update_rule) -> tuple:
    return tuple(
        copy.deepcopy(s)
        for s in (update_rule.policy.state_dict(), update_rule.value_function.state_dict(), update_rule.state_dict())
    )


# 7. Non-finite numbers ------------------------------------------------------------------------------------------


def inject_nan(monkeypatch, poisoned_step, field: str = "rewards") -> None:
    """EnvBatch.step returns NaN in env 0's entry of ``field`` (its reward, or with ``field="obs"`` its
    observation) at the lockstep steps where ``poisoned_step(t)`` is true."""
    real_step = trpo.envs.EnvBatch.step
    calls = {"n": 0}

    def step(self, actions):
        result = real_step(self, actions)
        if poisoned_step(calls["n"]):
            getattr(result, field)[0] = np.nan
        calls["n"] += 1
        return result

    monkeypatch.setattr(trpo.envs.EnvBatch, "step", step)


def record_updates(monkeypatch) -> list[dict]:
    """Record the networks and optimiser states just before each epoch's update -- when the Runner builds the
    batch, before the value fit starts and the policy steps -- and the policy step's stats (so one record's
    ``before`` is the state after the previous epoch's policy step and value fit)."""
    real_step, real_compute_batch = trpo.runner.guarded_policy_step, RolloutBuffer.compute_batch
    records = []

    def compute_batch(buffer, value_function, *args, **kwargs):
        records.append({"before": snapshot(update_rules[-1])})
        return real_compute_batch(buffer, value_function, *args, **kwargs)

    def step(update_rule, batch):
        records[-1]["stats"] = real_step(update_rule, batch)
        return records[-1]["stats"]

    update_rules = []  # the Runner's update rule, caught as it is built
    real_instantiate = trpo.runner.instantiate

    def instantiate(*args, **kwargs):
        update_rules.append(real_instantiate(*args, **kwargs))
        return update_rules[-1]

    monkeypatch.setattr(trpo.runner, "instantiate", instantiate)
    monkeypatch.setattr(RolloutBuffer, "compute_batch", compute_batch)
    monkeypatch.setattr(trpo.runner, "guarded_policy_step", step)
    return records


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param([], id="plain"),
        pytest.param(["sampler.normalize_rewards=true"], id="normalize_rewards"),
    ],
)
def test_one_epoch_of_nan_rewards_skips_that_update_only(tmp_path: Path, monkeypatch, extra: list[str]) -> None:
    inject_nan(monkeypatch, lambda t: t == STEPS_PER_EPOCH + 50)  # one reward, in epoch 1
    updates = record_updates(monkeypatch)
    cfg = compose_config([*CARTPOLE, "epochs=4", *extra])
    result = Runner(cfg, RunIdentity(tmp_path)).run()

    assert math.isfinite(result)
    assert [u["stats"] is None for u in updates] == [False, True, False, False]
    before_skipped, after_skipped = updates[1]["before"], updates[2]["before"]
    assert all(state_equal(a, b) for a, b in zip(before_skipped, after_skipped)), "the skipped update moved"
    assert not state_equal(updates[2]["before"][0], updates[3]["before"][0]), "training did not go on after it"
    rows = read_rows(tmp_path)
    assert [r["Epoch"] for r in rows] == ["0", "1", "2", "3"]
    assert [r["SkippedUpdates"] for r in rows] == ["0", "1", "1", "1"]
    assert math.isfinite(float(rows[2]["KL"])) and math.isfinite(float(rows[3]["EvalEpRet"]))


def test_one_nan_observation_skips_that_update_and_leaves_the_obs_statistics_finite(
    tmp_path: Path, monkeypatch
) -> None:
    """Pendulum's episodes last 200 steps, one epoch of 2 x 200: the NaN action that the NaN observation brings
    keeps env 0 NaN until its episode ends with epoch 1, and later epochs must train on finite statistics."""
    inject_nan(monkeypatch, lambda t: t == STEPS_PER_EPOCH + 50, field="obs")
    updates = record_updates(monkeypatch)
    pendulum = ["env=pendulum" if arg == "env=cartpole" else arg for arg in CARTPOLE]
    cfg = compose_config([*pendulum, "epochs=4", "sampler.normalize_obs=true"])
    result = Runner(cfg, RunIdentity(tmp_path)).run()

    assert math.isfinite(result)
    assert [u["stats"] is None for u in updates] == [False, True, False, False]
    assert [r["SkippedUpdates"] for r in read_rows(tmp_path)] == ["0", "1", "1", "1"]
    stats = load_checkpoint(tmp_path)["obs_normalizer"]
    assert np.isfinite(stats["mean"]).all() and np.isfinite(stats["var"]).all()


def test_persistent_nan_stops_the_run_with_the_last_checkpoint_intact(tmp_path: Path, monkeypatch) -> None:
    inject_nan(monkeypatch, lambda t: t >= STEPS_PER_EPOCH)  # every epoch from epoch 1 on
    updates = record_updates(monkeypatch)
    cfg = compose_config([*CARTPOLE, "epochs=8", "save_freq=1"])
    with pytest.raises(NonFiniteError, match="non-finite") as error:
        Runner(cfg, RunIdentity(tmp_path)).run()
    assert "in a row" in str(error.value) and "checkpoint" in str(error.value)

    limit = trpo.runner.MAX_NON_FINITE_EPOCHS
    assert [u["stats"] is None for u in updates] == [False] + [True] * limit
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint["epoch"] == limit  # saved after epochs 0..limit-1; the epoch that stopped the run is not
    after_epoch_0 = updates[1]["before"]
    assert state_equal(checkpoint["policy"], after_epoch_0[0])
    assert state_equal(checkpoint["value_function"], after_epoch_0[1])
    assert all(torch.isfinite(p).all() for p in checkpoint["policy"].values())
    assert len(read_rows(tmp_path)) == limit


def test_a_resumed_run_stops_where_the_run_it_continues_would(tmp_path: Path, monkeypatch) -> None:
    """The non-finite epochs in a row are counted across a resume: a run stopped after MAX_NON_FINITE_EPOCHS - 1
    of them stops at the next one once resumed, as a run never stopped does."""
    limit = trpo.runner.MAX_NON_FINITE_EPOCHS
    cfg = compose_config([*CARTPOLE, "epochs=8", "save_freq=1"])
    with monkeypatch.context() as patch:
        inject_nan(patch, lambda t: t >= STEPS_PER_EPOCH)  # every epoch from epoch 1 on
        stop_after_checkpoint(patch, epoch=limit)  # after epochs 1..limit-1, all non-finite
        with pytest.raises(Stopped):
            Runner(cfg, RunIdentity(tmp_path)).run()
    inject_nan(monkeypatch, lambda t: True)  # the resumed run's first epoch, epoch `limit`, too
    with pytest.raises(NonFiniteError, match=f"in {limit} epochs in a row \\(epochs 1-{limit}\\)"):
        Runner(cfg, RunIdentity(tmp_path)).run()


def build_update_rule(optimizer: str):
    """A real update rule and one epoch's batch of CartPole experience."""
    torch.manual_seed(0)
    cfg = compose_config([*CARTPOLE, f"optimizer={optimizer}"])
    envs = trpo.envs.EnvBatch(cfg.env.id, cfg.env.max_ep_len, 2)
    policy = make_policy(envs.observation_space, envs.action_space, **cfg.policy)
    value_function = ValueFunction(4, cfg.policy.hidden_sizes, cfg.policy.activation)
    update_rule = instantiate(cfg.optimizer, policy=policy, value_function=value_function)
    buffer = RolloutBuffer(100, 2, envs.observation_space.shape, envs.action_space.shape, envs.action_space.dtype)

    def next_batch():
        sampler.collect(buffer)
        return buffer.compute_batch(value_function, update_rule.gamma, update_rule.lam)[0]

    sampler = Sampler(envs, policy, seed=0)
    return update_rule, next_batch


@pytest.mark.parametrize("poison", ["policy_params", "stats"])
@pytest.mark.parametrize("optimizer", ["trpo", "vpg"])
def test_guarded_policy_step_rolls_back_a_non_finite_step_exactly(optimizer: str, poison: str) -> None:
    """The step really ran (the policy moved), then produced NaN: policy and optimiser states are restored bit for
    bit."""
    update_rule, next_batch = build_update_rule(optimizer)
    assert guarded_policy_step(update_rule, next_batch()) is not None  # a good epoch first: Adam states non-empty
    update_rule.fit_value_function(next_batch())
    before = snapshot(update_rule)
    real_step = update_rule.improve_policy
    moved = {}

    def poisoned_step(batch):
        stats = real_step(batch)
        moved["policy"] = not state_equal(update_rule.policy.state_dict(), before[0])
        with torch.no_grad():
            if poison == "policy_params":
                next(update_rule.policy.parameters()).view(-1)[0] = float("nan")
        return {**stats, "KL": float("nan")} if poison == "stats" else stats

    update_rule.improve_policy = poisoned_step
    assert guarded_policy_step(update_rule, next_batch()) is None
    assert moved == {"policy": True}
    after = snapshot(update_rule)
    assert all(state_equal(a, b) for a, b in zip(after, before)), "policy, value function or optimisers moved"


def test_guarded_policy_step_skips_a_non_finite_batch_without_stepping() -> None:
    update_rule, next_batch = build_update_rule("trpo")
    batch = next_batch()
    batch.advantages[3] = float("nan")
    calls = []
    update_rule.improve_policy = lambda b: calls.append(b) or {}
    assert guarded_policy_step(update_rule, batch) is None
    assert calls == []


@pytest.mark.parametrize("background", [False, True], ids=["inline", "background"])
def test_a_non_finite_value_fit_is_dropped_exactly(background: bool) -> None:
    """A return of 3e38 is finite, but its squared error overflows: the fit ends non-finite, and the value function
    and its Adam state stay bit for bit as before it, inline or in the child process."""
    update_rule, next_batch = build_update_rule("trpo")
    value_fit = make_value_fit(update_rule, background)
    try:
        value_fit.start(next_batch())  # a good fit first: Adam states non-empty
        assert value_fit.finish() is not None
        before = snapshot(update_rule)
        batch = next_batch()
        batch.returns[5] = 3e38
        value_fit.start(batch)
        assert value_fit.finish() is None
        assert all(state_equal(a, b) for a, b in zip(snapshot(update_rule), before))
    finally:
        value_fit.close()


def test_background_value_fit_gives_the_numbers_of_the_inline_one() -> None:
    """Same batches, same minibatch draws: the child process's fitted networks, Adam states and losses equal
    the inline fit's bit for bit."""
    results = []
    for background in (False, True):
        update_rule, next_batch = build_update_rule("trpo")
        update_rule.vf_minibatches = 4
        value_fit = make_value_fit(update_rule, background)
        try:
            stats = []
            for _ in range(3):
                value_fit.start(next_batch())
                stats.append({k: v for k, v in value_fit.finish().items() if k != "ValueFitTime"})
        finally:
            value_fit.close()
        results.append((snapshot(update_rule), stats))
    (inline_state, inline_stats), (background_state, background_stats) = results
    assert inline_stats == background_stats
    assert all(state_equal(a, b) for a, b in zip(inline_state, background_state))


# 8. W&B online without network or key ---------------------------------------------------------------------------


def isolate_wandb(monkeypatch, tmp_path: Path, api_key: str | None) -> None:
    """No credentials from this machine, a closed local port as the server, no stdin."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(home / ".config" / "wandb"))
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_NETRC", raising=False)
    if api_key is None:
        monkeypatch.delenv("WANDB_API_KEY", raising=False)
    else:
        monkeypatch.setenv("WANDB_API_KEY", api_key)


@pytest.mark.slow
@pytest.mark.parametrize("api_key", [None, "0123456789abcdef0123456789abcdef01234567"], ids=["no_key", "bogus_key"])
def test_wandb_online_without_network_or_key_falls_back_to_offline(tmp_path: Path, monkeypatch, api_key) -> None:
    """logger.mode=online with no key (non-interactive: no prompt) or a key for a server that is not there:
    the run finishes (within the W&B init timeout, 30 s, not W&B's 90 s), warns, logs offline."""
    isolate_wandb(monkeypatch, tmp_path, api_key)
    run_dir = tmp_path / "run"
    result = launch(["env=cartpole", *TINY, "logger.mode=online", f"hydra.run.dir={run_dir}"], timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "logging offline instead" in result.stderr
    rows = read_rows(run_dir)
    assert [r["Epoch"] for r in rows] == ["0", "1"] and rows[-1]["EvalEpRet"]
    [wandb_file] = wandb_runs(run_dir)
    logged = inspect_wandb(wandb_file, summary=True)
    assert logged["exit_code"] == 0
    assert logged["summary"]["EvalEpRet"] == pytest.approx(float(rows[-1]["EvalEpRet"]))


def test_wandb_init_timeout_from_the_environment_is_honoured(monkeypatch, tmp_path: Path) -> None:
    import wandb

    seen = {}

    def fake_init(mode, settings, **kwargs):
        seen["init_timeout"] = settings.init_timeout
        raise wandb.errors.CommError("unreachable")

    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "3")
    monkeypatch.setattr(wandb, "init", fake_init)
    with pytest.warns(UserWarning, match="training on without W&B"):
        logger = trpo.loggers.WandbLogger(tmp_path, {}, "online", "trpo", None, None, [], None)
    assert seen["init_timeout"] == 3
    assert logger.run is None  # online and offline both failed: the run trains on without W&B
    logger.log({"Epoch": 0, "KL": 0.01})  # and logging is a no-op, not an error


# 9. A W&B error mid-run -----------------------------------------------------------------------------------------


def test_wandb_error_mid_run_does_not_stop_training(tmp_path: Path, monkeypatch) -> None:
    import wandb

    real_init = trpo.loggers.WandbLogger.__init__
    calls = []

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        run, real_log = self.run, self.run.log

        def log(*a, **k):
            calls.append(k.get("step"))
            if len(calls) == 2:
                raise ConnectionResetError("W&B went away")
            return real_log(*a, **k)

        run.log = log

    monkeypatch.setattr(trpo.loggers.WandbLogger, "__init__", init)
    cfg = compose_config([*CARTPOLE, "epochs=3", "logger.mode=offline"])
    try:
        with pytest.warns(UserWarning, match="W&B failed.*W&B went away"):
            result = Runner(cfg, RunIdentity(tmp_path)).run()
    finally:
        if wandb.run is not None:  # the abandoned W&B run; a real process finishes it at exit
            wandb.finish()
        wandb.teardown()  # stop this process's wandb-core (and drop WANDB_SERVICE from os.environ)
    assert math.isfinite(result)
    assert calls == [0, 1], "W&B is used again after it failed"
    rows = read_rows(tmp_path)
    assert [r["Epoch"] for r in rows] == ["0", "1", "2"] and math.isfinite(float(rows[-1]["EvalEpRet"]))


# 10. Determinism ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("background", [False, True], ids=["inline", "background"])
def test_a_fit_finished_with_keep_false_changes_nothing(background: bool) -> None:
    """The fit of an epoch whose policy step was skipped is dropped: value function and Adam state as before."""
    update_rule, next_batch = build_update_rule("trpo")
    value_fit = make_value_fit(update_rule, background)
    try:
        value_fit.start(next_batch())
        assert value_fit.finish() is not None
        before = snapshot(update_rule)
        value_fit.start(next_batch())
        assert value_fit.finish(keep=False) is None
        assert all(state_equal(a, b) for a, b in zip(snapshot(update_rule), before))
        value_fit.start(next_batch())  # and the next fit runs as usual
        assert value_fit.finish() is not None
        assert not all(state_equal(a, b) for a, b in zip(snapshot(update_rule), before))
    finally:
        value_fit.close()


def test_an_error_in_the_child_process_is_raised_by_finish_and_the_child_ends_at_close() -> None:
    update_rule, next_batch = build_update_rule("trpo")
    value_fit = make_value_fit(update_rule, background=True)
    assert isinstance(value_fit, ChildProcessValueFit)
    try:
        batch = next_batch()
        value_fit.start(dataclasses.replace(batch, returns=batch.returns[:-1]))  # one target short of the rows
        with pytest.raises(RuntimeError, match="size"):
            value_fit.finish()
        value_fit.start(next_batch())  # the child is still serving
        assert value_fit.finish() is not None
    finally:
        value_fit.close()
    assert not value_fit._process.is_alive()


def rows_of_run(run_dir: Path, overrides: list[str]) -> list[dict[str, str]]:
    Runner(compose_config([*CARTPOLE, *overrides]), RunIdentity(run_dir)).run()
    return without_wall_clock(read_rows(run_dir))


def test_same_seed_and_config_give_identical_rows(tmp_path: Path) -> None:
    first = rows_of_run(tmp_path / "a", ["seed=3"])
    assert first == rows_of_run(tmp_path / "b", ["seed=3"])
    assert first != rows_of_run(tmp_path / "c", ["seed=4"])  # and the seed matters


def test_rows_do_not_depend_on_where_the_value_fit_runs(tmp_path: Path) -> None:
    """overlap_value_fit only moves the fit to a child process: the rows (checkpoint epochs and the others,
    minibatch draws included) are the same."""
    overrides = ["epochs=4", "save_freq=3", "optimizer.vf_minibatches=3", "optimizer.vf_lr_schedule=linear"]
    inline = rows_of_run(tmp_path / "inline", [*overrides, "overlap_value_fit=false"])
    assert inline == rows_of_run(tmp_path / "overlap", [*overrides, "overlap_value_fit=true"])


def test_rows_do_not_depend_on_the_number_of_env_workers(tmp_path: Path) -> None:
    in_process = rows_of_run(tmp_path / "w0", ["sampler.num_envs=4", "sampler.workers=0"])
    assert in_process == rows_of_run(tmp_path / "w2", ["sampler.num_envs=4", "sampler.workers=2"])


# 11. Bad input breadth ------------------------------------------------------------------------------------------

# (Each case test_config.py's BAD_VALUES checks, with its value, is not repeated here.)
BAD = [
    # wrong types
    ("epochs=ten", "epochs"),
    ("epochs=2.5", "epochs"),
    ("epochs=true", "epochs"),
    ("steps_per_epoch=[4000]", "steps_per_epoch"),
    ("seed=0.5", "seed"),
    ("optimizer.delta=[0.01]", "optimizer.delta"),
    ("optimizer.delta=inf", "optimizer.delta"),
    ("optimizer.cg_iters=10.0", "optimizer.cg_iters"),
    ("optimizer.train_v_iters=eighty", "optimizer.train_v_iters"),
    ("policy.hidden_sizes=64", "policy.hidden_sizes"),
    ("policy.hidden_sizes=[64.5,64]", "policy.hidden_sizes"),
    ("policy.hidden_sizes=[a,b]", "policy.hidden_sizes"),
    ("logger.tags=mytag", "logger.tags"),
    ("eval.video=maybe", "eval.video"),
    ("env.max_ep_len=1e3", "env.max_ep_len"),
    ("sampler.num_envs=4.0", "sampler.num_envs"),
    # out of range
    ("steps_per_epoch=0", "steps_per_epoch"),
    ("save_freq=0", "save_freq"),
    ("seed=-1", "seed"),
    ("torch_threads=0", "torch_threads"),
    ("sampler.workers=-1", "sampler.workers"),
    ("eval.episodes=0", "eval.episodes"),
    ("policy.hidden_sizes=[0]", "policy.hidden_sizes"),
    ("policy.hidden_sizes=[64,-1]", "policy.hidden_sizes"),
    ("optimizer.gamma=1.5", "optimizer.gamma"),
    ("optimizer.train_v_iters=-1", "optimizer.train_v_iters"),
    ("optimizer.vf_minibatches=0", "optimizer.vf_minibatches"),
    ("optimizer.vf_target=returns", "optimizer.vf_target"),
    ("overlap_value_fit=maybe", "overlap_value_fit"),
    ("optimizer.backtrack_iters=0", "optimizer.backtrack_iters"),
    ("steps_per_epoch=4001", "steps_per_epoch"),  # not a multiple of sampler.num_envs
    ("steps_per_epoch=32 optimizer.vf_minibatches=33", "optimizer.vf_minibatches"),  # more than the batch's rows
    # not one of the choices
    ("task=train2", "task"),
    ("device=cuda", "device"),
    ("logger.mode=onlin", "logger.mode"),
    ("env.id=HalfCheetah-v9", "env.id"),
    ("task=eval", "checkpoint"),  # without checkpoint=RUN_DIR
    ("checkpoint=outputs/runs/x", "checkpoint"),  # with task=train, it would train inside that run's dir
    ("task=eval checkpoint=outputs/runs/x resume=outputs/runs/x", "resume"),
    # unknown keys, appended with + as Hydra's own message suggests
    ("+optimizer.detla=0.02", "optimizer.detla"),
    ("+epoch=5", "epoch"),
    ("+sampler.num_workers=2", "sampler.num_workers"),
]


@pytest.mark.parametrize("override, key", BAD, ids=[o for o, _ in BAD])
def test_bad_input_is_refused_with_one_line_naming_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as error:
        validate(compose_config(override.split()))
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(key + "=") or message.startswith(key + " ") or key + "=" in message, message


def test_bad_input_for_npg_and_vpg_is_refused_too() -> None:
    for overrides, key in [
        (["optimizer=vpg", "optimizer.pi_lr=0"], "optimizer.pi_lr"),
        (["optimizer=vpg", "optimizer.train_pi_iters=1.5"], "optimizer.train_pi_iters"),
        (["optimizer=npg", "optimizer.delta=-1"], "optimizer.delta"),
        (["optimizer=vpg", "+optimizer.delta=0.01"], "optimizer.delta"),  # TRPO's key on VPG
    ]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            validate(compose_config(overrides))


def test_the_validator_accepts_the_defaults_and_other_envs_rules_and_logger_modes() -> None:
    """The refusals above are not a validator that refuses everything (every config file: test_config.py)."""
    validate(compose_config([]))
    for option in ["env=hopper", "env=cartpole", "optimizer=npg", "optimizer=vpg", "logger.mode=online"]:
        validate(compose_config([option]))


@pytest.mark.parametrize(
    "override, says",
    [("optimizer.detla=0.02", ["Could not override 'optimizer.detla'", "Key 'detla' is not in struct"])],
)
def test_hydra_level_errors_exit_non_zero_without_traceback(tmp_path: Path, override: str, says: list[str]) -> None:
    """A key Hydra itself cannot compose: Hydra's own message, no traceback, no run. (A misspelt group option
    is refused before Hydra: see test_end_to_end.test_unknown_group_option_is_refused_with_one_line.)"""
    run_dir = tmp_path / "run"
    result = launch([override, f"hydra.run.dir={run_dir}"])
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    for text in says:
        assert text in result.stderr, result.stderr
    assert not (run_dir / "wandb").exists() and not (run_dir / "progress.csv").exists()


@pytest.mark.parametrize(
    "override, key", [("sampler.workers=-1", "sampler.workers"), ("torch_threads=0", "torch_threads")]
)
def test_refused_config_through_the_real_command_leaves_no_run(tmp_path: Path, override: str, key: str) -> None:
    run_dir = tmp_path / "run"
    line = assert_one_line_refusal(launch(["env=cartpole", override, f"hydra.run.dir={run_dir}"]))
    assert line.startswith(f"error: {key}=")
    assert not (run_dir / "wandb").exists() and not (run_dir / "progress.csv").exists()
    assert not (run_dir / "checkpoint.pt").exists()
    assert (run_dir / "error.txt").read_text().startswith(f"{key}=")


def test_a_config_refused_while_the_run_is_built_closes_the_env_workers(tmp_path: Path) -> None:
    """A Beta policy needs Box actions: CartPole's refusal comes after its env worker processes have started,
    which must not outlive the run (a basic-launcher sweep would pile them up)."""
    import multiprocessing

    cfg = compose_config([*CARTPOLE, "sampler.workers=1", "policy.distribution=beta"])
    before = set(multiprocessing.active_children())  # what earlier tests may have left is not this run's
    with pytest.raises(ConfigError, match="policy.distribution"):
        Runner(cfg, RunIdentity(tmp_path)).run()
    assert set(multiprocessing.active_children()) <= before
