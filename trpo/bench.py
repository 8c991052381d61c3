"""``make bench``: how fast this TRPO trains, against the simulator's own speed and sb3-contrib's TRPO.

Prints a Markdown table and writes the numbers as JSON under ``outputs/bench/``. It measures:

- the raw single-process ``env.step`` rate of the task (random actions): the limit a sampler can reach on one core;
- this project end to end (``launch.py`` in a subprocess, W&B off): env steps/s, the seconds each epoch spends
  sampling and waiting for its update, the value fit's own seconds, and the peak memory of the run's processes
  (PSS and RSS); then the same run with everything on one core, one step after the other;
- sb3-contrib's TRPO at identical settings, when it is installed (``make install-bench``);
- scaling: sampling steps/s against ``sampler.num_envs`` (in this process, and over 1 and 2 worker processes),
  the update's time against network width and batch size, and one Fisher-vector product in Gauss-Newton form
  against the double backward pass.

Timings are noisy on a shared machine: this is a tool to read, never a test that asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from trpo.compare import cpu_model, read_table

ROOT = Path(__file__).resolve().parents[1]
SEQUENTIAL = ["overlap_value_fit=false"]


def raw_env_rate(env_id: str, steps: int = 20_000) -> float:
    """Steps per second of one env stepped with random actions in this process (resets included)."""
    env = gym.make(env_id)
    env.reset(seed=0)
    env.action_space.seed(0)
    actions = [env.action_space.sample() for _ in range(1000)]
    start = time.perf_counter()
    for i in range(steps):
        _, _, terminated, truncated, _ = env.step(actions[i % 1000])
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - start)


def _tree_memory_bytes(pid: int) -> tuple[int, int]:
    """Memory of a process and all its descendants, from /proc: the sum of their PSS (each shared page split
    between the processes that map it: what the run really occupies) and the sum of their RSS (each process's
    shared libraries counted again: an upper bound)."""
    pss, rss, stack = 0, 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if line.endswith("kB\n")}
            pss, rss = pss + fields["Pss"], rss + fields["Rss"]
            with open(f"/proc/{p}/task/{p}/children") as f:
                stack.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError, KeyError):
            continue
    return pss, rss


def project_rate(env: str, epochs: int, overrides: list[str], run_dir: Path) -> dict:
    """Train ``epochs`` epochs with ``launch.py`` and read the speed back from its progress.csv."""
    args = [sys.executable, str(ROOT / "launch.py"), f"env={env}", f"epochs={epochs}", "logger.mode=disabled"]
    args += ["eval.episodes=1", f"hydra.run.dir={run_dir}", *overrides]
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = [0, 0]  # PSS, RSS

    def watch() -> None:
        while process.poll() is None:
            peak[:] = map(max, peak, _tree_memory_bytes(process.pid))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    _, stderr = process.communicate()
    watcher.join()
    if process.returncode != 0:
        raise RuntimeError(f"launch.py failed: {stderr.strip()}")
    return steady_rate(read_table(run_dir), peak_pss_bytes=peak[0], peak_rss_bytes=peak[1])


def steady_rate(table: dict[str, np.ndarray], peak_pss_bytes: float, peak_rss_bytes: float) -> dict:
    """The speed in a run's progress.csv columns (``table``), over its epochs after the first two (over all of them
    in a run of two or fewer)."""
    # The first two epochs pay for warm-up (process starts, allocator); report the steady state after them.
    first = 2 if len(table["Epoch"]) > 2 else 0
    steady = {name: column[first:] for name, column in table.items()}
    steady_epochs = len(steady["Epoch"])
    steps = float(table["TotalEnvInteracts"][0]) * steady_epochs
    sample, update = float(steady["SampleTime"].sum()), float(steady["UpdateTime"].sum())
    return {
        "steps_per_s": steps / (sample + update),
        "sample_s_per_epoch": sample / steady_epochs,
        "update_s_per_epoch": update / steady_epochs,
        "update_fraction": update / (sample + update),
        "value_fit_s_per_epoch": float(np.nansum(steady["ValueFitTime"])) / steady_epochs,
        "sampling_steps_per_s": steps / sample,
        "peak_pss_mib": peak_pss_bytes / 2**20,
        "peak_rss_mib": peak_rss_bytes / 2**20,
    }


def sb3_contrib_rate(env_id: str, steps: int) -> float | None:
    """sb3-contrib's TRPO at Spinning Up's settings; None when sb3-contrib is not installed."""
    try:
        from sb3_contrib import TRPO
    except ImportError:
        return None
    model = TRPO(
        "MlpPolicy",
        env_id,
        n_steps=4000,
        batch_size=4000,  # one full-batch critic step per critic update, as Spinning Up does
        learning_rate=1e-3,
        n_critic_updates=80,
        gamma=0.99,
        gae_lambda=0.97,
        target_kl=0.01,
        cg_max_steps=10,
        cg_damping=0.1,
        line_search_shrinking_factor=0.8,
        line_search_max_iter=10,
        policy_kwargs={"net_arch": {"pi": [64, 64], "vf": [64, 64]}},
        seed=0,
        device="cpu",
    )
    start = time.perf_counter()
    model.learn(total_timesteps=steps)
    return steps / (time.perf_counter() - start)


def sampling_rate(env_id: str, num_envs: int, workers: int, steps: int = 8000) -> float:
    """Env steps/s of the sampler alone (policy calls included, no update)."""
    from trpo.buffer import RolloutBuffer
    from trpo.envs import make_env_batch
    from trpo.networks import make_policy
    from trpo.sampler import Sampler

    envs = make_env_batch(env_id, 1000, num_envs, workers)
    policy = make_policy(envs.observation_space, envs.action_space, [64, 64], "tanh", -0.5)
    sampler = Sampler(envs, policy, seed=0)
    shape = envs.observation_space.shape, envs.action_space.shape, envs.action_space.dtype
    buffer = RolloutBuffer(steps // num_envs, num_envs, *shape)
    sampler.collect(RolloutBuffer(max(1, 1000 // num_envs), num_envs, *shape))  # warm-up
    start = time.perf_counter()
    sampler.collect(buffer)
    rate = steps / (time.perf_counter() - start)
    envs.close()
    return rate


def update_time(width: int, batch_size: int, rule_name: str = "TRPO", obs_dim: int = 17, act_dim: int = 6) -> dict:
    """Seconds of one update (``TRPO``, or ``VPG`` for comparison) at Spinning Up's settings, on random data."""
    from trpo.buffer import Batch
    from trpo.networks import ValueFunction, make_policy
    from trpo.updates import TRPO, VPG

    torch.manual_seed(0)
    obs_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,))
    act_space = gym.spaces.Box(-1.0, 1.0, (act_dim,))
    policy = make_policy(obs_space, act_space, [width, width], "tanh", -0.5)
    value_function = ValueFunction(obs_dim, [width, width], "tanh")
    value_kwargs = dict(gamma=0.99, lam=0.97, vf_lr=1e-3, train_v_iters=80)
    if rule_name == "TRPO":
        rule = TRPO(
            policy, value_function, backtrack_iters=10, backtrack_coeff=0.8, delta=0.01, damping_coeff=0.1, cg_iters=10,
            **value_kwargs,
        )
    else:
        rule = VPG(policy, value_function, pi_lr=3e-4, train_pi_iters=1, **value_kwargs)
    obs = torch.randn(batch_size, obs_dim)
    with torch.no_grad():
        actions = policy.sample(obs)
        logp = policy.distribution(obs).log_prob(actions)
    batch = Batch(obs, actions, logp, torch.randn(batch_size), torch.randn(batch_size))
    start = time.perf_counter()
    rule.policy_step(batch)
    middle = time.perf_counter()
    rule.fit_value_function(batch)
    end = time.perf_counter()
    return {
        "rule": type(rule).__name__,
        "width": width,
        "batch": batch_size,
        "policy_step_s": middle - start,
        "value_fit_s": end - middle,
    }


def fisher_product_times(batch_size: int = 4000, obs_dim: int = 17, act_dim: int = 6, repeats: int = 30) -> dict:
    """Milliseconds of one Fisher-vector product on a (64, 64) Gaussian policy: the Gauss-Newton form this
    project uses, against the double backward pass of Spinning Up and sb3-contrib; and the largest difference of
    their products, relative to the product's largest entry (the same product: rounding only)."""
    from trpo.networks import GaussianPolicy
    from trpo.trust_region import fisher_vector_product, flat_grad, mean_kl

    torch.manual_seed(0)
    policy = GaussianPolicy(obs_dim, act_dim, [64, 64], "tanh", -0.5)
    params = list(policy.parameters())
    obs = torch.randn(batch_size, obs_dim)
    with torch.no_grad():
        old = policy.distribution(obs)
    kl_grad = flat_grad(mean_kl(old, policy.distribution(obs)), params, create_graph=True)

    def double_backprop(v: torch.Tensor) -> torch.Tensor:
        grads = torch.autograd.grad(kl_grad @ v, params, retain_graph=True)
        return torch.cat([g.reshape(-1) for g in grads]) + 0.1 * v

    gauss_newton = fisher_vector_product(*policy.linearize(obs), policy.fisher_metric, params, 0.1)
    v = torch.randn(sum(p.numel() for p in params))
    times, products = {}, []
    for name, product in (("gauss_newton_ms", gauss_newton), ("double_backprop_ms", double_backprop)):
        products.append(product(v))
        start = time.perf_counter()
        for _ in range(repeats):
            product(v)
        times[name] = (time.perf_counter() - start) / repeats * 1000
    gauss_newton_product, double_backprop_product = products
    difference = (gauss_newton_product - double_backprop_product).abs().max() / double_backprop_product.abs().max()
    return {**times, "max_relative_difference": difference.item()}


def _machine() -> str:
    return f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="halfcheetah", help="config name under conf/env/")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of the end-to-end run")
    parser.add_argument("--sb3-steps", type=int, default=12_000, help="env steps of the sb3-contrib run")
    parser.add_argument("--skip-scaling", action="store_true", help="only the end-to-end comparison")
    parser.add_argument("overrides", nargs="*", help="extra launch.py overrides for the end-to-end run")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    from omegaconf import OmegaConf

    env_id = OmegaConf.load(ROOT / "conf" / "env" / f"{args.env}.yaml").id
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out_dir = ROOT / "outputs" / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict = {"date": stamp, "machine": _machine(), "env": env_id, "overrides": args.overrides}

    results["raw_env_steps_per_s"] = raw_env_rate(env_id)
    results["project"] = project_rate(args.env, args.epochs, args.overrides, out_dir / f"run-{stamp}")
    # The same run with everything on one core, one step after the other: what the overlap buys.
    sequential = [*SEQUENTIAL, *args.overrides]
    results["project_sequential"] = project_rate(args.env, args.epochs, sequential, out_dir / f"run-{stamp}-seq")
    results["sb3_contrib_steps_per_s"] = sb3_contrib_rate(env_id, args.sb3_steps)
    if not args.skip_scaling:
        results["sampling_scaling"] = [
            {"num_envs": n, "workers": w, "steps_per_s": sampling_rate(env_id, n, w)}
            for w in (0, 1, 2)
            for n in (1, 2, 4, 8, 16)
            if n >= w
        ]
        results["update_scaling"] = [update_time(w, 4000) for w in (64, 256, 1024)] + [
            update_time(64, b) for b in (1000, 16000)
        ] + [update_time(64, 4000, "VPG")]
        results["fisher_vector_product"] = fisher_product_times()

    (out_dir / f"bench-{stamp}.json").write_text(json.dumps(results, indent=2))
    print(format_table(results))
    print(f"\nwritten: {out_dir / f'bench-{stamp}.json'}")


def format_table(r: dict) -> str:
    """The bench results as Markdown."""
    p = r["project"]
    raw, sb3 = r["raw_env_steps_per_s"], r["sb3_contrib_steps_per_s"]
    lines = [
        f"Bench of {r['env']} on {r['machine']}, {r['date']}"
        + (f", overrides {r['overrides']}" if r["overrides"] else ""),
        "",
        "| measure | value |",
        "|---|---|",
        f"| raw env.step, 1 process | {raw:,.0f} steps/s |",
        f"| this project, end to end | {p['steps_per_s']:,.0f} steps/s ({p['steps_per_s'] / raw:.2f}x raw) |",
        f"| - sampling | {p['sample_s_per_epoch']:.3f} s/epoch ({p['sampling_steps_per_s']:,.0f} steps/s) |",
        f"| - update the epoch waits for | {p['update_s_per_epoch']:.3f} s/epoch "
        f"({100 * p['update_fraction']:.0f}% of the epoch) |",
        f"| - value fit, beside the next sampling | {p['value_fit_s_per_epoch']:.3f} s/epoch |",
        f"| peak memory of the run's processes | {p['peak_pss_mib']:.0f} MiB PSS ({p['peak_rss_mib']:.0f} MiB RSS) |",
    ]
    q = r["project_sequential"]
    lines.append(
        f"| the same, all on one core ({' '.join(SEQUENTIAL)}) | {q['steps_per_s']:,.0f} steps/s, update "
        f"{100 * q['update_fraction']:.0f}% of the epoch |"
    )
    if sb3 is not None:
        lines.append(
            f"| sb3-contrib TRPO, same settings | {sb3:,.0f} steps/s (this project: {p['steps_per_s'] / sb3:.1f}x) |"
        )
    else:
        lines.append("| sb3-contrib TRPO | not installed (`make install-bench`) |")
    if "sampling_scaling" in r:
        lines += ["", "| sampler.num_envs | sampler.workers | sampling steps/s |", "|---|---|---|"]
        lines += [f"| {s['num_envs']} | {s['workers']} | {s['steps_per_s']:,.0f} |" for s in r["sampling_scaling"]]
        lines += ["", "| rule | hidden width | batch | policy step s | value fit s |", "|---|---|---|---|---|"]
        lines += [
            f"| {u['rule']} | {u['width']} | {u['batch']} | {u['policy_step_s']:.3f} | {u['value_fit_s']:.3f} |"
            for u in r["update_scaling"]
        ]
        f = r["fisher_vector_product"]
        lines += [
            "",
            f"One Fisher-vector product, (64, 64) policy, batch 4000: Gauss-Newton {f['gauss_newton_ms']:.1f} ms, "
            f"double backprop {f['double_backprop_ms']:.1f} ms (products agree to {f['max_relative_difference']:.0e})",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
