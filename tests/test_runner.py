"""The Runner's epoch loop wires the config into its parts: when the schedules anneal, which discount the reward
scaler keeps, and which epochs are checkpointed."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import DictConfig

from trpo import runner
from trpo.runner import RunIdentity, Runner, TrainingState
from trpo.updates import UpdateRule


def test_schedules_are_annealed_before_each_epochs_update(
    tiny_cartpole_cfg: DictConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With delta and vf_lr decaying linearly over 4 epochs, epoch e's policy step and value fit run at
    (1 - e/4) of each, so the first update uses the configured values and the last a quarter of them."""
    seen = []
    improve_policy = UpdateRule.improve_policy

    def recording(rule: UpdateRule, batch):
        seen.append((rule.delta, rule.vf_optimizer.param_groups[0]["lr"]))
        return improve_policy(rule, batch)

    monkeypatch.setattr(UpdateRule, "improve_policy", recording)
    cfg = tiny_cartpole_cfg
    cfg.epochs = 4
    cfg.optimizer.delta_schedule = "linear"
    cfg.optimizer.vf_lr_schedule = "linear"
    Runner(cfg, RunIdentity(tmp_path)).run()
    delta, vf_lr = cfg.optimizer.delta, cfg.optimizer.vf_lr
    assert seen == [pytest.approx((delta * (1 - e / 4), vf_lr * (1 - e / 4))) for e in range(4)]


def test_the_reward_scaler_discounts_with_the_optimizers_gamma(
    tiny_cartpole_cfg: DictConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The return whose std scales the rewards is discounted as the advantages are: optimizer.gamma."""
    gammas = []

    class RecordingScaler(runner.RewardScaler):
        def __init__(self, num_envs: int, gamma: float, **kwargs):
            gammas.append(gamma)
            super().__init__(num_envs, gamma, **kwargs)

    monkeypatch.setattr(runner, "RewardScaler", RecordingScaler)
    cfg = tiny_cartpole_cfg
    cfg.sampler.normalize_rewards = True
    cfg.optimizer.gamma = 0.9
    Runner(cfg, RunIdentity(tmp_path)).run()
    assert gammas == [0.9]


def test_checkpoints_are_written_every_save_freq_epochs_and_at_the_end(
    tiny_cartpole_cfg: DictConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """save_freq=2 over 5 epochs: after epochs 2 and 4, and after the last, which alone carries the final
    evaluation's return."""
    saved = []
    save = Runner._save

    def recording(self: Runner, parts, state: TrainingState, eval_ep_ret: float | None) -> None:
        saved.append((state.epoch, eval_ep_ret is not None))
        save(self, parts, state, eval_ep_ret)

    monkeypatch.setattr(Runner, "_save", recording)
    cfg = tiny_cartpole_cfg
    cfg.epochs, cfg.save_freq = 5, 2
    Runner(cfg, RunIdentity(tmp_path)).run()
    assert saved == [(2, False), (4, False), (5, True)]
