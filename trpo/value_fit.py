"""Where the value fit runs: in this process, or in a second process while the next epoch is sampled.

The value function fitted on epoch :math:`k` is first read when epoch :math:`k+1`'s advantages are computed,
after its sampling. So the fit can run on the second core while this process samples: :class:`BackgroundValueFit`
ships the fit (networks' states, the batch and the minibatch rows drawn here) to a child process and loads
the result back before it is needed. Both classes run the same :func:`~trpo.updates.fit_value_function` on the
same numbers, so a run gives the same rows either way.

A fit that ends with non-finite parameters or losses is dropped: the value function and its optimiser stay as
they were before it, and :meth:`finish` returns None.
"""

from __future__ import annotations

import copy
import math
import multiprocessing as mp
import time
from multiprocessing.connection import Connection

import torch

from trpo.buffer import Batch
from trpo.updates import UpdateRule, ValueFitJob, fit_value_function


def _finite(value_state: dict, stats: dict[str, float]) -> bool:
    return all(torch.isfinite(t).all() for t in value_state.values()) and all(math.isfinite(v) for v in stats.values())


class InlineValueFit:
    """Fits the value function in this process, at :meth:`start`."""

    def __init__(self, update_rule: UpdateRule):
        self.update_rule = update_rule
        self._result: dict[str, float] | None = None

    def start(self, batch: Batch) -> None:
        rule = self.update_rule
        saved = copy.deepcopy(rule.value_function.state_dict()), copy.deepcopy(rule.vf_optimizer.state_dict())
        started = time.perf_counter()
        stats = rule.fit_value_function(batch)
        if _finite(rule.value_function.state_dict(), stats):
            self._result = {**stats, "ValueFitTime": time.perf_counter() - started}
        else:
            rule.value_function.load_state_dict(saved[0])
            rule.vf_optimizer.load_state_dict(saved[1])
            self._result = None

    def finish(self) -> dict[str, float] | None:
        """The fit's stats, or None when it was dropped."""
        return self._result

    def close(self) -> None:
        pass


def _fit_in_child(connection: Connection, value_function: torch.nn.Module) -> None:
    torch.set_num_threads(1)
    optimizer = torch.optim.Adam(value_function.parameters())
    while (message := connection.recv()) is not None:
        value_state, optimizer_state, job = message
        value_function.load_state_dict(value_state)
        optimizer.load_state_dict(optimizer_state)
        started = time.perf_counter()
        stats = fit_value_function(value_function, optimizer, job)
        stats["ValueFitTime"] = time.perf_counter() - started
        connection.send((*_detached(value_function, optimizer), stats))


def _detached(value_function: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Copies of the two states to send: torch sends a tensor through a pipe by moving its storage to shared
    memory, so sending the live tensors would let the other process's next fit write into them."""
    return copy.deepcopy(value_function.state_dict()), copy.deepcopy(optimizer.state_dict())


class BackgroundValueFit:
    """Fits the value function in a child process between :meth:`start` and :meth:`finish`.

    The child keeps no state between fits: each fit sends the value function's and its optimiser's states with
    the batch, and :meth:`finish` loads the fitted states back into the update rule's own objects, so
    checkpoints, resumes and rollbacks only ever deal with this process's copies.
    """

    def __init__(self, update_rule: UpdateRule):
        self.update_rule = update_rule
        context = mp.get_context("spawn")  # no fork of a process that already runs torch threads
        self._connection, child_end = context.Pipe()
        self._process = context.Process(
            target=_fit_in_child, args=(child_end, copy.deepcopy(update_rule.value_function)), daemon=True
        )
        self._process.start()
        child_end.close()
        self._pending = False

    def start(self, batch: Batch) -> None:
        rule = self.update_rule
        job: ValueFitJob = rule.value_fit_job(batch)
        self._connection.send((*_detached(rule.value_function, rule.vf_optimizer), job))
        self._pending = True

    def finish(self) -> dict[str, float] | None:
        """Wait for the fit; load its result unless it is non-finite. Returns its stats, or None when dropped."""
        self._pending = False
        value_state, optimizer_state, stats = self._connection.recv()
        if not _finite(value_state, stats):
            return None
        self.update_rule.value_function.load_state_dict(value_state)
        self.update_rule.vf_optimizer.load_state_dict(optimizer_state)
        return stats

    def close(self) -> None:
        if not self._pending:  # a child still fitting is killed: nobody will read its result
            try:
                self._connection.send(None)
            except (BrokenPipeError, OSError):
                pass
            self._process.join(timeout=5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()


def make_value_fit(update_rule: UpdateRule, background: bool) -> InlineValueFit | BackgroundValueFit:
    return BackgroundValueFit(update_rule) if background else InlineValueFit(update_rule)
