"""Where the value fit runs: in this process when asked for, or in a child process beside the policy step and
the next epoch's sampling.

The fit of epoch :math:`k` needs only that epoch's batch (observations and regression targets), and its value
function is first read when epoch :math:`k+1`'s advantages are computed, after its sampling. So the Runner
calls :meth:`start` as soon as the batch exists and (through its EpochLog) :meth:`finish` just before the value
function is needed; :class:`ChildProcessValueFit` does the fit on the second core in between. Both classes run the same
:func:`~trpo.updates.fit_value_function` on the same numbers (the minibatch rows are drawn in :meth:`start`, from
this process's RNG), so a run gives the same rows either way.

A fit that ends with non-finite parameters or losses is dropped: the value function and its optimiser stay as
they were before it, and ``finish`` returns None. So is a fit whose epoch's policy step was skipped
(``finish(keep=False)``).
"""

from __future__ import annotations

import copy
import gc
import multiprocessing as mp
import pickle
import time
from multiprocessing.connection import Connection

import torch

from trpo.buffer import Batch
from trpo.updates import UpdateRule, ValueFitJob, finite_outcome, fit_value_function


def value_states(update_rule: UpdateRule) -> tuple[dict, dict]:
    """Copies of the value function's and its Adam optimiser's states."""
    return copy.deepcopy(update_rule.value_function.state_dict()), copy.deepcopy(update_rule.vf_optimizer.state_dict())


def load_value_states(update_rule: UpdateRule, states: tuple[dict, dict]) -> None:
    update_rule.value_function.load_state_dict(states[0])
    update_rule.vf_optimizer.load_state_dict(states[1])


def guarded_value_fit(update_rule: UpdateRule, job: ValueFitJob) -> dict[str, float] | None:
    """Fit the update rule's value function on ``job``; undo the fit if it ends non-finite (then None)."""
    saved = value_states(update_rule)
    started = time.perf_counter()
    stats = fit_value_function(update_rule.value_function, update_rule.vf_optimizer, job)
    if finite_outcome(update_rule.value_function, stats):
        return {**stats, "ValueFitTime": time.perf_counter() - started}
    load_value_states(update_rule, saved)
    return None


class InlineValueFit:
    """Fits the value function at :meth:`start`, in this process (so the epoch's update time includes the fit)."""

    overlaps_sampling = False

    def __init__(self, update_rule: UpdateRule):
        self.update_rule = update_rule
        self._before: tuple[dict, dict] | None = None
        self._result: dict[str, float] | None = None

    def start(self, batch: Batch) -> None:
        self._before = value_states(self.update_rule)
        self._result = guarded_value_fit(self.update_rule, self.update_rule.value_fit_job(batch))

    def finish(self, keep: bool = True) -> dict[str, float] | None:
        """The fit's stats, or None when it was dropped; ``keep`` False undoes it."""
        if keep:
            return self._result
        load_value_states(self.update_rule, self._before)
        return None

    def close(self) -> None:
        pass


_STOP = b"stop"  # no pickle is this short


def _serve_value_fits(
    connection: Connection, parent_end: Connection, update_rule: UpdateRule, torch_threads: int
) -> None:
    """The child's loop: take the parent's value function and Adam state with each job, fit, send them back."""
    parent_end.close()  # the fork's copy of it: with it open, the parent's death would not end the loop
    torch.set_num_threads(torch_threads)
    while True:
        try:
            message = connection.recv_bytes()
        except EOFError:  # the parent died
            return
        if message == _STOP:
            return
        states, job = pickle.loads(message)
        try:
            load_value_states(update_rule, states)
            result = (guarded_value_fit(update_rule, job), value_states(update_rule))
        except Exception as error:  # raised again in the parent, by finish()
            result = error
        try:
            connection.send_bytes(pickle.dumps(result))
        except OSError:  # the parent died during the fit
            return


class ChildProcessValueFit:
    """Fits the value function in a child process between :meth:`start` and :meth:`finish`.

    The child is forked once, so it shares this process's memory pages (torch included) instead of loading a
    second torch. Every job carries the value function's and Adam's current states and the result carries them
    back, so the child holds no state of its own: resuming, the learning-rate schedule and dropped fits all act
    on this process's copies. The child needs no GIL in common with this process, so the fit runs on the second
    core while this one does the policy step and samples the next epoch.
    """

    overlaps_sampling = True  # the job is a copy: the next epoch's sampling may overwrite the batch

    def __init__(self, update_rule: UpdateRule):
        self.update_rule = update_rule
        context = mp.get_context("fork")
        self._connection, child_end = context.Pipe()
        gc.freeze()  # the child's garbage collector then leaves the shared pages of this process's objects alone
        self._process = context.Process(
            target=_serve_value_fits,
            args=(child_end, self._connection, update_rule, torch.get_num_threads()),
            name="value-fit",
            daemon=True,
        )
        self._process.start()
        gc.unfreeze()
        child_end.close()
        self._fitting = False

    def start(self, batch: Batch) -> None:
        job = self.update_rule.value_fit_job(batch)
        # Plain pickle copies tensors by value; multiprocessing's pickler would move them to shared memory.
        self._connection.send_bytes(pickle.dumps((value_states(self.update_rule), job)))
        self._fitting = True

    def finish(self, keep: bool = True) -> dict[str, float] | None:
        """Wait for the fit (raising its error, if any) and take its result unless ``keep`` is False; the fit's
        stats, or None when it was dropped."""
        result = pickle.loads(self._connection.recv_bytes())
        self._fitting = False
        if isinstance(result, Exception):
            raise result
        stats, states = result
        if not keep or stats is None:
            return None
        load_value_states(self.update_rule, states)
        return stats

    def close(self) -> None:
        """End the child: at once where a fit is still running (a run that stops on an error), else when it
        has read the request to stop."""
        if self._fitting:
            self._process.kill()
        else:
            try:
                self._connection.send_bytes(_STOP)
            except OSError:  # the child is gone already
                pass
        self._connection.close()
        self._process.join(timeout=5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()


def make_value_fit(update_rule: UpdateRule, background: bool) -> InlineValueFit | ChildProcessValueFit:
    """The child-process fit where ``background`` asks for it and the platform can fork, else the inline one."""
    if background and "fork" in mp.get_all_start_methods():
        return ChildProcessValueFit(update_rule)
    return InlineValueFit(update_rule)
