"""The bench's pieces, on runs short enough for the tests: its table, the project's rate read back from a run, the
update timing and the Fisher-vector product timing."""

from __future__ import annotations

from pathlib import Path

import pytest

import numpy as np

from trpo.bench import SEQUENTIAL, fisher_product_times, format_table, project_rate, steady_rate, update_time


def project(steps_per_s: float) -> dict:
    return {
        "steps_per_s": steps_per_s,
        "sample_s_per_epoch": 0.5,
        "update_s_per_epoch": 0.1,
        "update_fraction": 0.1 / 0.6,
        "value_fit_s_per_epoch": 0.4,
        "sampling_steps_per_s": 8000.0,
        "peak_pss_mib": 400.0,
        "peak_rss_mib": 500.0,
    }


def test_table_reports_the_ratios_to_the_simulator_and_to_sb3_contrib() -> None:
    results = {
        "date": "2026-11-26",
        "machine": "test machine",
        "env": "HalfCheetah-v5",
        "overrides": [],
        "raw_env_steps_per_s": 10_000.0,
        "project": project(5_000.0),
        "project_sequential": project(4_000.0),
        "sb3_contrib_steps_per_s": 1_000.0,
        "sampling_scaling": [{"num_envs": 16, "workers": 1, "steps_per_s": 7_000.0}],
        "update_scaling": [{"rule": "TRPO", "width": 64, "batch": 4000, "policy_step_s": 0.1, "value_fit_s": 0.4}],
        "fisher_vector_product": {"gauss_newton_ms": 4.0, "double_backprop_ms": 8.0, "max_relative_difference": 3e-7},
    }
    table = format_table(results)
    assert "| this project, end to end | 5,000 steps/s (0.50x raw) |" in table
    assert "(this project: 5.0x)" in table
    assert f"all on one core ({' '.join(SEQUENTIAL)}) | 4,000 steps/s" in table
    assert "400 MiB PSS (500 MiB RSS)" in table
    assert "Gauss-Newton 4.0 ms, double backprop 8.0 ms (products agree to 3e-07)" in table
    assert "| 16 | 1 | 7,000 |" in table


def test_fisher_product_timing_times_two_ways_to_one_product() -> None:
    """Both products are timed, and they are two computations of the same product: equal to rounding, not
    bit for bit (one product timed twice would differ by exactly 0)."""
    times = fisher_product_times(batch_size=64, repeats=2)
    assert set(times) == {"gauss_newton_ms", "double_backprop_ms", "max_relative_difference"}
    assert times["gauss_newton_ms"] > 0 and times["double_backprop_ms"] > 0
    assert 0 < times["max_relative_difference"] < 1e-5


@pytest.mark.parametrize("rule_name", ["TRPO", "VPG"])
def test_update_timing_builds_and_steps_each_rule(rule_name: str) -> None:
    timing = update_time(width=16, batch_size=64, rule_name=rule_name)
    assert (timing["rule"], timing["width"], timing["batch"]) == (rule_name, 16, 64)
    assert timing["policy_step_s"] > 0 and timing["value_fit_s"] > 0


def test_steady_rate_leaves_out_the_first_two_epochs() -> None:
    """Four epochs of 400 steps; the first two slow (warm-up). Epochs 2-3: 800 steps in 1.5 s sampling + 0.5 s
    updating, so 400 steps/s end to end and 533 while sampling; value fits of 0.3 s and none (NaN)."""
    table = {
        "Epoch": np.array([0, 1, 2, 3.0]),
        "TotalEnvInteracts": np.array([400, 800, 1200, 1600.0]),
        "SampleTime": np.array([9.0, 9.0, 0.5, 1.0]),
        "UpdateTime": np.array([9.0, 9.0, 0.2, 0.3]),
        "ValueFitTime": np.array([9.0, 9.0, 0.3, np.nan]),
    }
    rate = steady_rate(table, peak_pss_bytes=100 * 2**20, peak_rss_bytes=150 * 2**20)
    assert rate == pytest.approx(
        {
            "steps_per_s": 400.0,
            "sample_s_per_epoch": 0.75,
            "update_s_per_epoch": 0.25,
            "update_fraction": 0.25,
            "value_fit_s_per_epoch": 0.15,
            "sampling_steps_per_s": 800 / 1.5,
            "peak_pss_mib": 100.0,
            "peak_rss_mib": 150.0,
        }
    )


def test_project_rate_reads_a_short_runs_steady_epochs(tmp_path: Path) -> None:
    args = ["steps_per_epoch=400", "sampler.num_envs=2", "optimizer.train_v_iters=5"]
    rate = project_rate("cartpole", 4, args, tmp_path / "run")
    assert rate["steps_per_s"] > 0 and rate["sampling_steps_per_s"] > rate["steps_per_s"]
    assert 0 < rate["update_fraction"] < 1 and rate["value_fit_s_per_epoch"] > 0
    assert rate["peak_rss_mib"] >= rate["peak_pss_mib"] > 0
