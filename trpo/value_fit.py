"""Where the value fit runs: now, or in a background thread while the next epoch is sampled.

The value function fitted on epoch :math:`k` is first read when epoch :math:`k+1`'s advantages are computed,
after its sampling. So its fit can run on the second core while this thread samples: :class:`BackgroundValueFit`
starts it in a thread and :meth:`~BackgroundValueFit.finish` waits for it before the value function is needed.
Torch and MuJoCo do their arithmetic outside Python's GIL, so the two overlap on two cores. Both classes run
the same :func:`~trpo.updates.fit_value_function` on the same numbers (the minibatch rows are drawn in the
calling thread), so a run gives the same rows either way.

A fit that ends with non-finite parameters or losses is dropped: the value function and its optimiser stay as
they were before it, and ``finish`` returns None.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from trpo.buffer import Batch
from trpo.updates import UpdateRule, ValueFitJob, fit_value_function


def guarded_value_fit(update_rule: UpdateRule, job: ValueFitJob) -> dict[str, float] | None:
    """Fit the update rule's value function on ``job``; undo the fit if it ends non-finite (then None)."""
    value_function, optimizer = update_rule.value_function, update_rule.vf_optimizer
    saved = copy.deepcopy(value_function.state_dict()), copy.deepcopy(optimizer.state_dict())
    started = time.perf_counter()
    stats = fit_value_function(value_function, optimizer, job)
    finite_params = all(torch.isfinite(p).all() for p in value_function.parameters())
    if finite_params and all(math.isfinite(v) for v in stats.values()):
        return {**stats, "ValueFitTime": time.perf_counter() - started}
    value_function.load_state_dict(saved[0])
    optimizer.load_state_dict(saved[1])
    return None


class InlineValueFit:
    """Fits the value function at :meth:`start`, in the calling thread."""

    def __init__(self, update_rule: UpdateRule):
        self.update_rule = update_rule
        self._result: dict[str, float] | None = None

    def start(self, batch: Batch) -> None:
        self._result = guarded_value_fit(self.update_rule, self.update_rule.value_fit_job(batch))

    def finish(self) -> dict[str, float] | None:
        """The fit's stats, or None when it was dropped."""
        return self._result

    def close(self) -> None:
        pass


class BackgroundValueFit:
    """Fits the value function in a background thread between :meth:`start` and :meth:`finish`.

    Nothing may read or write the value function or its optimiser in between -- not even the learning-rate
    schedule: the Runner only samples (with the policy) until it calls :meth:`finish`.
    """

    def __init__(self, update_rule: UpdateRule):
        self.update_rule = update_rule
        # A new thread starts with OpenMP's default thread count, not the one torch_threads set in this one.
        self._executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="value-fit",
            initializer=torch.set_num_threads,
            initargs=(torch.get_num_threads(),),
        )
        self._fit: Future | None = None

    def start(self, batch: Batch) -> None:
        job = self.update_rule.value_fit_job(batch)
        # The batch's observations are a view of the rollout buffer, which the next epoch's sampling overwrites.
        job = dataclasses.replace(job, obs=job.obs.clone(), returns=job.returns.clone())
        self._fit = self._executor.submit(guarded_value_fit, self.update_rule, job)

    def finish(self) -> dict[str, float] | None:
        """Wait for the fit (re-raising its error, if any); its stats, or None when it was dropped."""
        return self._fit.result()

    def close(self) -> None:
        self._executor.shutdown(wait=True)


def make_value_fit(update_rule: UpdateRule, background: bool) -> InlineValueFit | BackgroundValueFit:
    return BackgroundValueFit(update_rule) if background else InlineValueFit(update_rule)
