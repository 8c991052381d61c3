"""Checkpoints: everything needed to continue a run exactly, written atomically, loaded without running code.

A checkpoint is one ``checkpoint.pt`` in the run's directory holding tensors and plain data only, so it is
loaded with ``torch.load(..., weights_only=True)``: a file can never execute code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1
# The keys of checkpoints written before 2026-11-28, under the names their config keys have.
LEGACY_NAMES = {"env_id": "env.id", "hidden_sizes": "policy.hidden_sizes", "activation": "policy.activation"}


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable, or from another env or network; its message is for the user."""


def save_checkpoint(run_dir: Path, payload: dict[str, Any]) -> None:
    """Write ``run_dir/checkpoint.pt`` atomically: a crash mid-write leaves the previous checkpoint intact."""
    path = Path(run_dir) / CHECKPOINT_NAME
    tmp = path.with_suffix(".pt.tmp")
    with open(tmp, "wb") as f:
        torch.save({"format": FORMAT_VERSION, **payload}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    """Read ``run_dir/checkpoint.pt``; raise :class:`CheckpointError` with a clear message if it cannot be used."""
    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path} (is {run_dir} a run directory written by launch.py?)")
    try:
        checkpoint = torch.load(path, weights_only=True)
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"checkpoint {path} is corrupt or not a checkpoint ({type(error).__name__})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has an unknown format")
    return checkpoint


def check_compatible(checkpoint: dict[str, Any], training_keys: dict[str, Any]) -> None:
    """Refuse a checkpoint trained with other values of ``training_keys`` (config keys by their dotted names: the
    env, the policy, the update rule, the batch, the normalisation), naming the first key that differs. Keys an
    older checkpoint lacks are not checked."""
    saved = {LEGACY_NAMES.get(key, key): value for key, value in checkpoint["model"].items()}
    for key, value in training_keys.items():
        if key in saved and saved[key] != value:
            raise CheckpointError(
                f"checkpoint was trained with {key}={saved[key]!r}, but this run has {key}={value!r}"
            )
