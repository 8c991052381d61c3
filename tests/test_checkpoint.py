"""Checkpoints: exact resume after a hard kill, env state round trips, atomic writes, safe loading, refusals.

The promises under test are those of ``trpo/checkpoint.py`` and ``trpo/runner.py``: a resumed run gives the
same ``progress.csv`` rows as one that was never stopped (wall-clock columns aside), a failed write never
destroys the previous checkpoint, a checkpoint file can never run code, and an unusable checkpoint or run
dir is refused with one line and exit status 2.
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import trpo.checkpoint
import trpo.runner
from tests.conftest import (
    ROOT,
    TINY,
    Stopped,
    assert_one_line_refusal,
    compose_config,
    inspect_wandb,
    launch,
    launch_env,
    read_rows,
    stop_after_checkpoint,
    wandb_runs,
    without_wall_clock,
)
from trpo.checkpoint import CHECKPOINT_NAME, CheckpointError, check_compatible, load_checkpoint, save_checkpoint
from trpo.compare import read_run
from trpo.envs import EnvBatch, SubprocEnvBatch, make_env_batch
from trpo.runner import RunIdentity, Runner, restore_trained_hydra_files


CARTPOLE = ["env=cartpole", *TINY, "sampler.num_envs=2", "sampler.workers=0", "save_freq=1"]


def train_in_process(run_dir: Path, overrides: list[str]) -> float:
    """A run as launch.py makes it (with its .hydra/config.yaml), trained in this process, W&B off."""
    cfg = compose_config([*overrides, "logger.mode=disabled"])
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    return Runner(cfg, RunIdentity(run_dir)).run()


@pytest.fixture(scope="module")
def cartpole_run(tmp_path_factory) -> Path:
    """A finished 2-epoch CartPole run dir (checkpoint.pt, progress.csv, .hydra/config.yaml); copy before use."""
    run_dir = tmp_path_factory.mktemp("cartpole") / "run"
    train_in_process(run_dir, CARTPOLE)
    return run_dir


# 1. Exact resume after kill -9 ---------------------------------------------------------------------------------

# save_freq=2: the odd epochs overlap their value fit with the next epoch, so the kill can land in one.
HOPPER = ["env=hopper", "epochs=6", "save_freq=2", "steps_per_epoch=1024", "sampler.num_envs=4", "eval.episodes=2"]


def start(args: list[str], log: Path) -> subprocess.Popen:
    """``python launch.py ARGS`` in its own session, so killpg reaches its env workers too."""
    env = launch_env()
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "launch.py"), *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def data_rows(run_dir: Path) -> int:
    path = run_dir / "progress.csv"
    if not path.exists():
        return 0
    return max(0, sum(1 for line in path.read_text().splitlines() if line.strip()) - 1)


@pytest.mark.slow
def test_resume_after_kill_9_gives_the_rows_of_an_uninterrupted_run(tmp_path: Path) -> None:
    """SIGKILL the whole process group mid-run, `resume=A`: same rows as run B that never stopped, no duplicate
    epochs, and the resumed W&B run continues the first one's id."""
    a, b = tmp_path / "A", tmp_path / "B"
    first = start([*HOPPER, f"hydra.run.dir={a}"], tmp_path / "a.log")
    uninterrupted = start([*HOPPER, f"hydra.run.dir={b}"], tmp_path / "b.log")
    try:
        deadline = time.monotonic() + 400
        while data_rows(a) < 3:
            assert first.poll() is None, f"run A ended before it was killed:\n{(tmp_path / 'a.log').read_text()}"
            assert time.monotonic() < deadline, "run A wrote no 3 rows in time"
            time.sleep(0.1)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode == -signal.SIGKILL
    assert 3 <= data_rows(a) < 6, "the kill must land mid-run, or the test proves nothing"

    resumed = launch([f"resume={a}"], timeout=400)
    assert resumed.returncode == 0, resumed.stderr
    assert uninterrupted.wait(timeout=400) == 0, (tmp_path / "b.log").read_text()

    rows_a, rows_b = read_rows(a), read_rows(b)
    assert [r["Epoch"] for r in rows_a] == [str(e) for e in range(6)]
    assert without_wall_clock(rows_a) == without_wall_clock(rows_b)

    # Two offline runs in A: the killed one and the resumed one. The killed one's .wandb file may hold nothing
    # but its header (W&B flushes it every 15 s, and kill -9 reached its wandb-core too), so its id is read from
    # its directory name, offline-run-<time>-<id>; the resumed one's from the run record it logged.
    killed_file, resumed_file = wandb_runs(a)  # sorted by start time
    killed_id = killed_file.parent.name.rsplit("-", 1)[1]
    [run] = [r["run"] for r in inspect_wandb(resumed_file, summary=False) if r["type"] == "run"]
    assert run["run_id"] == killed_id
    assert inspect_wandb(resumed_file, summary=True)["summary"]["EvalEpRet"] == pytest.approx(
        float(rows_a[-1]["EvalEpRet"])
    )


def test_resume_before_the_first_checkpoint_starts_clean(tmp_path: Path, cartpole_run: Path) -> None:
    """Killed after some epochs but before the first checkpoint (e.g. save_freq=10): the rerun starts at epoch 0,
    and progress.csv ends with one row per epoch, not the dead run's rows followed by the new ones."""
    run_dir = tmp_path / "run"
    shutil.copytree(cartpole_run, run_dir)
    (run_dir / CHECKPOINT_NAME).unlink()  # what a kill at epoch 2 of a save_freq=10 run leaves
    Runner(compose_config([*CARTPOLE, "logger.mode=disabled"]), RunIdentity(run_dir)).run()
    assert [r["Epoch"] for r in read_rows(run_dir)] == ["0", "1"]


PENDULUM = ["env=pendulum", "env.max_ep_len=50", "epochs=4", "steps_per_epoch=256", "sampler.num_envs=4",
            "sampler.workers=0", "save_freq=1", "eval.episodes=1", "overlap_value_fit=false"]


@pytest.mark.parametrize(
    "settings",
    [
        ["experiment=mujoco"],
        ["experiment=mujoco", "policy.distribution=gaussian", "policy.final_log_std=-1.0",
         "optimizer.delta_schedule=linear"],
        ["optimizer=vpg", "sampler.normalize_obs=true", "sampler.normalize_rewards=true"],
    ],
    ids=["general-preset", "gaussian-schedules", "vpg"],
)
def test_a_run_stopped_after_a_checkpoint_continues_as_if_never_stopped(
    tmp_path: Path, monkeypatch, settings: list[str]
) -> None:
    """With what the presets switch on (observation and reward normalisers, minibatch critic with a decaying
    learning rate, Beta policy, natural_lr cap, log-std and delta schedules; VPG's own Adam state), a run stopped
    after epoch 2's checkpoint and relaunched gives the rows of a run that never stopped."""
    overrides = [*PENDULUM, *settings, "logger.mode=disabled"]
    reference = tmp_path / "reference"
    Runner(compose_config(overrides), RunIdentity(reference)).run()

    stopped = tmp_path / "stopped"
    with monkeypatch.context() as patch:
        stop_after_checkpoint(patch, epoch=2)
        with pytest.raises(Stopped):
            Runner(compose_config(overrides), RunIdentity(stopped)).run()
    assert load_checkpoint(stopped)["epoch"] == 2
    Runner(compose_config(overrides), RunIdentity(stopped)).run()
    assert [r["Epoch"] for r in read_rows(stopped)] == ["0", "1", "2", "3"]
    assert without_wall_clock(read_rows(stopped)) == without_wall_clock(read_rows(reference))


# 2. Env state round trip ----------------------------------------------------------------------------------------


def random_actions(envs, steps: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    space = envs.action_space
    if space.shape == ():  # discrete
        return rng.integers(0, space.n, size=(steps, envs.num_envs)).astype(space.dtype)
    # float32, as the sampler's policy gives them; a bit beyond the bounds so clipping is exercised too
    return rng.uniform(-1.2, 1.2, size=(steps, envs.num_envs, *space.shape)).astype(np.float32)


def rollout(envs, actions: np.ndarray) -> list[tuple]:
    out = []
    for a in actions:
        s = envs.step(a)
        out.append((s.obs, s.rewards, s.terminated, s.truncated, s.final_obs, s.finished_returns, s.finished_lengths))
    return out


def assert_same_rollout(got: list[tuple], expected: list[tuple]) -> None:
    for t, (g, e) in enumerate(zip(got, expected, strict=True)):
        for name, x, y in zip(("obs", "rewards", "terminated", "truncated", "final_obs", "returns", "lengths"), g, e):
            assert np.array_equal(np.asarray(x), np.asarray(y)), f"step {t}: {name} differs"


@pytest.mark.parametrize("workers", [0, 2], ids=["EnvBatch", "SubprocEnvBatch"])
@pytest.mark.parametrize("env_id", ["Hopper-v5", "CartPole-v1"])
def test_env_state_round_trip(tmp_path: Path, env_id: str, workers: int) -> None:
    """get_state -> checkpoint file -> set_state on fresh envs: the same observations, rewards and episode ends
    for the same actions, across episode resets, as the envs that were never restored."""
    num_envs, max_ep_len = 3, 15
    envs = make_env_batch(env_id, max_ep_len, num_envs, workers)
    try:
        assert isinstance(envs, SubprocEnvBatch if workers else EnvBatch)
        envs.reset(seed=7)
        actions = random_actions(envs, 90, seed=1)
        before = rollout(envs, actions[:40])
        assert sum(len(step[5]) for step in before) >= num_envs, "no episode ended before the snapshot"
        state = envs.get_state()
        assert any("rng_state" in s for s in state), "no env is in an episode begun by a mid-run reset"
        assert any(len(s["actions"]) > 0 for s in state), "no env is mid-episode"
        snapshot_obs = before[-1][0]
        expected = rollout(envs, actions[40:])
    finally:
        envs.close()
    assert sum(len(step[5]) for step in expected) >= num_envs, "no episode ended after the snapshot"

    # Through the checkpoint file, as a resume does (weights_only must accept the RNG states).
    save_checkpoint(tmp_path, {"envs": state})
    state = load_checkpoint(tmp_path)["envs"]

    restored = make_env_batch(env_id, max_ep_len, num_envs, workers)
    try:
        restored.reset(seed=12345)  # the Sampler resets before a resume restores: set_state must override it
        obs = restored.set_state(state)
        assert np.array_equal(obs, snapshot_obs)
        assert_same_rollout(rollout(restored, actions[40:]), expected)
    finally:
        restored.close()


def test_env_state_moves_between_envbatch_and_subprocenvbatch() -> None:
    """A state saved with workers=0 continues identically with workers=2 (a resume may change sampler.workers)."""
    envs = make_env_batch("CartPole-v1", 15, 3, 0)
    envs.reset(seed=3)
    actions = random_actions(envs, 60, seed=2)
    rollout(envs, actions[:30])
    state = envs.get_state()
    expected = rollout(envs, actions[30:])
    envs.close()
    restored = make_env_batch("CartPole-v1", 15, 3, 2)
    try:
        restored.reset(seed=0)
        restored.set_state(state)
        assert_same_rollout(rollout(restored, actions[30:]), expected)
    finally:
        restored.close()


# 3. Atomic write ------------------------------------------------------------------------------------------------


def test_failed_write_leaves_the_previous_checkpoint_intact(tmp_path: Path, monkeypatch) -> None:
    """torch.save dies half-way: the old checkpoint.pt is untouched and still loads; the partial
    checkpoint.pt.tmp is never read as the checkpoint; the next save succeeds."""
    old = {"epoch": 3, "weights": torch.arange(5.0)}
    save_checkpoint(tmp_path, old)
    old_bytes = (tmp_path / CHECKPOINT_NAME).read_bytes()

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        f.flush()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(trpo.checkpoint.torch, "save", dying_save)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, {"epoch": 4, "weights": torch.zeros(5)})
    monkeypatch.undo()

    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == old_bytes
    loaded = load_checkpoint(tmp_path)
    assert loaded["epoch"] == 3 and torch.equal(loaded["weights"], old["weights"])

    save_checkpoint(tmp_path, {"epoch": 4, "weights": torch.zeros(5)})  # a stale .tmp must not block the next save
    assert load_checkpoint(tmp_path)["epoch"] == 4
    assert not (tmp_path / "checkpoint.pt.tmp").exists()


# 4. Loading never executes code ---------------------------------------------------------------------------------


class _RunsCode:
    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_crafted_checkpoint_is_refused_without_running_code(tmp_path: Path, writer: str) -> None:
    sentinel = tmp_path / "SENTINEL"
    payload = {"format": trpo.checkpoint.FORMAT_VERSION, "epoch": 1, "evil": _RunsCode(sentinel)}
    with open(tmp_path / CHECKPOINT_NAME, "wb") as f:
        torch.save(payload, f) if writer == "torch.save" else pickle.dump(payload, f)
    # The file really would run the code if unpickled without restrictions.
    with open(tmp_path / "probe.pkl", "wb") as f:
        pickle.dump(_RunsCode(tmp_path / "PROBE"), f)
    pickle.loads((tmp_path / "probe.pkl").read_bytes())
    assert (tmp_path / "PROBE").exists()

    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path)
    assert not sentinel.exists()


@pytest.mark.parametrize("content", [{"format": 999, "epoch": 1}, {"epoch": 1}, [1, 2]], ids=["future", "none", "list"])
def test_a_checkpoint_of_another_format_is_refused(tmp_path: Path, content) -> None:
    """A loadable file that is not a checkpoint of this format (a later version, none, not a dict) is refused by
    name, not read as one."""
    torch.save(content, tmp_path / CHECKPOINT_NAME)
    with pytest.raises(CheckpointError, match="has an unknown format"):
        load_checkpoint(tmp_path)


# 5. Refusals: one line, exit status 2, no traceback -------------------------------------------------------------


def test_resume_of_a_dir_without_a_run_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "not_a_run"
    empty.mkdir()
    # cwd: where a refused resume's own job dir (outputs/runs/...) may go
    assert_one_line_refusal(launch([f"resume={empty}"], cwd=tmp_path), "resume", str(empty))
    assert not (empty / "progress.csv").exists() and not (empty / "wandb").exists()


def test_resume_says_which_overrides_it_ignores(tmp_path: Path, cartpole_run: Path) -> None:
    """resume= continues a run with its saved config; what else the command set is named, not dropped silently."""
    run_dir = tmp_path / "run"
    shutil.copytree(cartpole_run, run_dir)
    resumed = launch([f"resume={run_dir}", "epochs=5", "optimizer.delta=0.05"])
    assert resumed.returncode == 0, resumed.stderr
    assert "already finished" in resumed.stdout
    assert "ignored: epochs=5 optimizer.delta=0.05" in resumed.stderr
    assert load_checkpoint(run_dir)["epoch"] == 2


@pytest.mark.parametrize("command", [["resume={}"], ["task=eval", "checkpoint={}"]], ids=["resume", "eval"])
def test_a_mistyped_run_dir_is_not_created(tmp_path: Path, command: list[str]) -> None:
    missing = tmp_path / "typo"
    args = [a.format(missing) for a in command]
    assert_one_line_refusal(launch(args, cwd=tmp_path), "typo")
    assert not missing.exists()


def test_eval_of_a_dir_without_checkpoint_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "no_checkpoint"
    empty.mkdir()
    run_dir = tmp_path / "eval_job"
    assert_one_line_refusal(launch(["task=eval", f"checkpoint={empty}", f"hydra.run.dir={run_dir}"]), "checkpoint")
    assert not (run_dir / "wandb").exists()


def test_resume_with_a_truncated_checkpoint_is_refused(tmp_path: Path, cartpole_run: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(cartpole_run, run_dir)
    path = run_dir / CHECKPOINT_NAME
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    rows = (run_dir / "progress.csv").read_text()
    assert_one_line_refusal(launch([f"resume={run_dir}"]), "checkpoint", "corrupt")
    assert (run_dir / "progress.csv").read_text() == rows
    assert not (run_dir / "wandb").exists()


def test_resume_with_a_checkpoint_of_another_env_is_refused(tmp_path: Path, cartpole_run: Path) -> None:
    """The run's saved config says Hopper, its checkpoint is CartPole's: refused, naming the env key and both ids."""
    run_dir = tmp_path / "run"
    shutil.copytree(cartpole_run, run_dir)
    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    saved.env = compose_config(["env=hopper"]).env
    OmegaConf.save(saved, run_dir / ".hydra" / "config.yaml")
    assert_one_line_refusal(launch([f"resume={run_dir}"]), "env", "CartPole-v1", "Hopper-v5")
    assert not (run_dir / "wandb").exists()


@pytest.mark.parametrize(
    "override, key",
    [
        ("policy.hidden_sizes=[32]", "hidden_sizes"),
        ("policy.activation=relu", "activation"),
        ("optimizer=vpg", "optimizer"),
        ("sampler.num_envs=4", "num_envs"),
        ("steps_per_epoch=200", "steps_per_epoch"),
        ("+env.kwargs.sutton_barto_reward=true", "env.kwargs"),
        ("sampler.normalize_obs=true", "normalize_obs"),
        ("sampler.normalize_rewards=true", "normalize_rewards"),
        ("sampler.clip_actions=false", "clip_actions"),
        ("env.max_ep_len=100", "env.max_ep_len"),
        ("seed=1", "seed"),
        ("optimizer.delta=0.02", "optimizer.delta"),
        ("optimizer.lam=0.9", "optimizer.lam"),
        ("policy.init_log_std=0.0", "policy.init_log_std"),
        ("policy.ortho_init=true", "policy.ortho_init"),
    ],
)
def test_relaunch_with_another_network_optimizer_or_batch_is_refused(
    tmp_path: Path, cartpole_run: Path, override: str, key: str
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(cartpole_run, run_dir)
    cfg = compose_config([*CARTPOLE, "epochs=3", override, "logger.mode=disabled"])
    with pytest.raises(CheckpointError, match=key):
        Runner(cfg, RunIdentity(run_dir)).run()
    assert len(read_rows(run_dir)) == 2


def test_a_value_set_in_training_and_unset_now_is_a_difference() -> None:
    """null is a value like any other: a run trained with a natural_lr cap is not continued without it, nor one
    trained without it with one."""
    for saved, now in ((20.0, None), (None, 20.0)):
        with pytest.raises(CheckpointError, match=f"optimizer.natural_lr={saved!r}, but this run has"):
            check_compatible({"model": {"optimizer.natural_lr": saved}}, {"optimizer.natural_lr": now})
    check_compatible({"model": {"optimizer.natural_lr": None}}, {"optimizer.natural_lr": None})


def test_finished_run_relaunched_with_another_config_is_refused_not_reported(
    tmp_path: Path, cartpole_run: Path
) -> None:
    """A finished run's EvalEpRet is only returned again for the config it was trained with: after a preset
    change, ``make results`` must not label the old number with the new config."""
    run_dir = tmp_path / "run"
    shutil.copytree(cartpole_run, run_dir)
    same = compose_config([*CARTPOLE, "logger.mode=disabled"])
    assert Runner(same, RunIdentity(run_dir)).run() == float(read_rows(run_dir)[-1]["EvalEpRet"])
    changed = compose_config([*CARTPOLE, "optimizer.delta=0.02", "logger.mode=disabled"])
    with pytest.raises(CheckpointError, match="optimizer.delta=0.01, but this run has optimizer.delta=0.02"):
        Runner(changed, RunIdentity(run_dir)).run()


def test_a_checkpoint_from_before_the_key_names_changed_is_still_checked(tmp_path: Path, cartpole_run: Path) -> None:
    """Checkpoints written before 2026-11-28 name env_id, hidden_sizes and activation so."""
    run_dir = tmp_path / "run"
    shutil.copytree(cartpole_run, run_dir)
    checkpoint = load_checkpoint(run_dir)
    checkpoint["model"] = {"env_id": "CartPole-v1", "hidden_sizes": [64, 64], "activation": "tanh"}
    save_checkpoint(run_dir, {k: v for k, v in checkpoint.items() if k != "format"})
    cfg = compose_config([*CARTPOLE, "epochs=3", "policy.activation=relu", "logger.mode=disabled"])
    with pytest.raises(CheckpointError, match="policy.activation='tanh', but this run has policy.activation='relu'"):
        Runner(cfg, RunIdentity(run_dir)).run()


def test_a_relaunch_that_does_not_train_leaves_the_run_as_it_was_trained(tmp_path: Path) -> None:
    """Hydra saves each relaunch's config and overrides into the run's .hydra/ before anything is checked. Refused
    by the checkpoint, refused as a bad value, or finding the run finished (with other eval settings): every time
    the trained files are put back and no error.txt marks the run failed, so it still evaluates (and compares) as
    what it is."""
    run_dir = tmp_path / "run"
    args = ["env=cartpole", *TINY, "sampler.num_envs=2", f"hydra.run.dir={run_dir}"]
    assert launch(args).returncode == 0
    trained = {path.name: path.read_bytes() for path in (run_dir / ".hydra").iterdir()}
    assert set(trained) == {"config.yaml", "overrides.yaml", "hydra.yaml"}
    assert_one_line_refusal(launch([*args, "optimizer.delta=0.02"]), "optimizer.delta=0.01", "another run dir")
    assert_one_line_refusal(launch([*args, "optimizer.delta=-1"]), "optimizer.delta")
    finished = launch([*args, "eval.episodes=3"])
    assert finished.returncode == 0 and "already finished" in finished.stdout
    assert {path.name: path.read_bytes() for path in (run_dir / ".hydra").iterdir()} == trained
    assert not (run_dir / "error.txt").exists()
    assert read_run(run_dir).status == "finished"
    evaluated = launch(["task=eval", f"checkpoint={run_dir}", "logger.mode=disabled", f"hydra.run.dir={tmp_path}/e"])
    assert evaluated.returncode == 0, evaluated.stderr


def test_the_trained_hydra_files_come_back_from_the_checkpoint(tmp_path: Path, cartpole_run: Path) -> None:
    """restore_trained_hydra_files: every file a checkpoint kept; only config.yaml from one written before
    2026-12-07 (its "config"); nothing, and no error, from a corrupt one."""
    run_dir = tmp_path / "run"
    shutil.copytree(cartpole_run, run_dir)
    hydra_dir = run_dir / ".hydra"
    checkpoint = {k: v for k, v in load_checkpoint(run_dir).items() if k not in ("format", "hydra_files")}
    names = ("config.yaml", "overrides.yaml", "hydra.yaml")

    save_checkpoint(run_dir, {**checkpoint, "hydra_files": {name: f"trained {name}" for name in names}})
    for name in names:
        (hydra_dir / name).write_text("relaunched")
    restore_trained_hydra_files(run_dir)
    assert [(hydra_dir / name).read_text() for name in names] == [f"trained {name}" for name in names]

    save_checkpoint(run_dir, {**checkpoint, "config": "old-format config"})
    for name in names:
        (hydra_dir / name).write_text("relaunched")
    restore_trained_hydra_files(run_dir)
    assert [(hydra_dir / name).read_text() for name in names] == ["old-format config", "relaunched", "relaunched"]

    (run_dir / CHECKPOINT_NAME).write_bytes(b"not a checkpoint")
    restore_trained_hydra_files(run_dir)
    assert (hydra_dir / "config.yaml").read_text() == "old-format config"


def test_a_run_with_a_linear_schedule_is_not_extended_to_more_epochs(tmp_path: Path) -> None:
    """Its critic's learning rate was set to reach 0 at epoch 2: a third epoch would restart it near its top."""
    args = [*CARTPOLE, "optimizer.vf_lr_schedule=linear", "logger.mode=disabled"]
    Runner(compose_config(args), RunIdentity(tmp_path)).run()
    with pytest.raises(CheckpointError, match="epochs=2, but this run has epochs=3: its linear schedules"):
        Runner(compose_config([*args, "epochs=3"]), RunIdentity(tmp_path)).run()
    assert len(read_rows(tmp_path)) == 2


def test_a_run_that_goes_on_clears_an_earlier_attempts_error(tmp_path: Path, cartpole_run: Path) -> None:
    """A crashed job requeued into its dir, which then finishes, is no longer listed as failed."""
    run_dir = tmp_path / "run"
    shutil.copytree(cartpole_run, run_dir)
    (run_dir / "error.txt").write_text("run failed: MemoryError: \n")
    Runner(compose_config([*CARTPOLE, "epochs=3", "logger.mode=disabled"]), RunIdentity(run_dir)).run()
    assert not (run_dir / "error.txt").exists()
    assert load_checkpoint(run_dir)["epoch"] == 3


def test_a_fresh_run_replaces_a_progress_csv_it_did_not_write(tmp_path: Path, cartpole_run: Path) -> None:
    """A run dir holding another file's progress.csv (a committed record's four columns) and no checkpoint: the
    run starts its own file, header and all, instead of appending its rows under a header that is not theirs."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    record = "Epoch,TotalEnvInteracts,AverageEpRet,EvalEpRet\n0,400,9.5,\n1,800,20.0,30.0\n"
    (run_dir / "progress.csv").write_text(record)
    Runner(compose_config([*CARTPOLE, "logger.mode=disabled"]), RunIdentity(run_dir)).run()
    assert without_wall_clock(read_rows(run_dir)) == without_wall_clock(read_rows(cartpole_run))


# 6. Finished runs, extended runs --------------------------------------------------------------------------------


@pytest.mark.slow
def test_finished_run_is_not_retrained_and_a_larger_epochs_extends_it(tmp_path: Path) -> None:
    run_dir = tmp_path / "A"
    args = ["env=cartpole", *TINY, "sampler.num_envs=2", f"hydra.run.dir={run_dir}"]
    first = launch(args)
    assert first.returncode == 0, first.stderr
    csv_text = (run_dir / "progress.csv").read_text()
    eval_ep_ret = float(read_rows(run_dir)[-1]["EvalEpRet"])
    checkpoint_bytes = (run_dir / CHECKPOINT_NAME).read_bytes()

    again = launch(args)
    assert again.returncode == 0, again.stderr
    assert "already finished" in again.stdout
    assert f"EvalEpRet {eval_ep_ret:.2f}" in again.stdout
    assert "epoch " not in again.stdout  # no epoch was trained
    assert (run_dir / "progress.csv").read_text() == csv_text
    assert (run_dir / CHECKPOINT_NAME).read_bytes() == checkpoint_bytes
    assert len(wandb_runs(run_dir)) == 1

    longer = launch([*args, "epochs=3"])
    assert longer.returncode == 0, longer.stderr
    rows = read_rows(run_dir)
    assert [r["Epoch"] for r in rows] == ["0", "1", "2"]
    assert (run_dir / "progress.csv").read_text().startswith(csv_text)  # the first rows, byte for byte
    assert load_checkpoint(run_dir)["epoch"] == 3

    # It continued from the checkpoint: epoch 2 is the epoch 2 of a 3-epoch run that never stopped.
    reference = tmp_path / "reference"
    Runner(compose_config(["env=cartpole", *TINY, "sampler.num_envs=2", "epochs=3", "logger.mode=disabled"]),
           RunIdentity(reference)).run()
    assert without_wall_clock(rows)[2] == without_wall_clock(read_rows(reference))[2]


def test_relaunch_with_fewer_epochs_than_an_unfinished_checkpoint_is_refused_and_left_as_it_was(
    tmp_path: Path, cartpole_run: Path
) -> None:
    """A run stopped at epoch 1 of 2 (its checkpoint has no EvalEpRet yet), relaunched with epochs=1: refused with
    the way to continue it (not a TypeError from formatting None, not a stale number), its files untouched."""
    run_dir = tmp_path / "run"
    shutil.copytree(cartpole_run, run_dir)
    checkpoint = load_checkpoint(run_dir)
    checkpoint.update(epoch=1, eval_ep_ret=None)  # what save_freq=1 leaves after epoch 0 of 2
    save_checkpoint(run_dir, {k: v for k, v in checkpoint.items() if k != "format"})
    files = {name: (run_dir / name).read_bytes() for name in (CHECKPOINT_NAME, "progress.csv")}
    cfg = compose_config([*CARTPOLE, "epochs=1", "logger.mode=disabled"])
    with pytest.raises(CheckpointError, match="before its final evaluation: continue it with epochs > 1"):
        Runner(cfg, RunIdentity(run_dir)).run()
    assert {name: (run_dir / name).read_bytes() for name in files} == files


def test_only_the_final_checkpoint_holds_an_eval_ep_ret(tmp_path: Path, monkeypatch) -> None:
    """With eval.freq=2 and a checkpoint every epoch, epoch 2's checkpoint comes right after an evaluation: it still
    holds no eval_ep_ret, which marks a finished run; the final checkpoint holds the final EvalEpRet."""
    saved = []

    def recording_save(run_dir: Path, payload: dict) -> None:
        saved.append((payload["epoch"], payload["eval_ep_ret"]))
        save_checkpoint(run_dir, payload)

    monkeypatch.setattr(trpo.runner, "save_checkpoint", recording_save)
    run_dir = tmp_path / "run"
    final = train_in_process(run_dir, [*CARTPOLE, "epochs=4", "eval.freq=2"])  # CARTPOLE saves every epoch
    rows = read_rows(run_dir)
    assert [bool(row["EvalEpRet"]) for row in rows] == [False, True, False, True]
    assert saved == [(1, None), (2, None), (3, None), (4, final)]
    assert float(rows[-1]["EvalEpRet"]) == pytest.approx(final)
