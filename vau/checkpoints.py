"""Checkpoint files: find a run's newest one, start from another run's weights, and write them atomically."""

from __future__ import annotations

import logging
import os
import pickle
import re
import tempfile
from pathlib import Path

from lightning.fabric.plugins import TorchCheckpointIO
from omegaconf import DictConfig

from vau.config import ConfigError, choices

log = logging.getLogger(__name__)


def _run_order(ckpt: Path) -> tuple[str, int]:
    """Run folders by name: timestamp, then the suffix a same-second run got (``..._2`` before ``..._10``)."""
    match = re.fullmatch(r"(.*?)(?:_(\d+))?", ckpt.parent.parent.name)
    return match.group(1), int(match.group(2) or 0)


def newest_checkpoint(cfg: DictConfig, experiment: str, key: str) -> str:
    """``checkpoints/last.ckpt`` of ``experiment``'s newest run under ``paths.output_dir``; ``key`` names the asker."""
    runs = sorted((Path(cfg.paths.output_dir) / experiment).glob("*/checkpoints/last.ckpt"), key=_run_order)
    if not runs:
        raise ConfigError(f"{key}: no checkpoints/last.ckpt under {cfg.paths.output_dir}/{experiment}; "
                          f"{first_run_hint(cfg, experiment)}, or give a checkpoint path")
    return str(runs[-1])


def first_run_hint(cfg: DictConfig, experiment: str) -> str:
    """What to run so that ``experiment`` has a checkpoint: the exact command when it is a shipped experiment."""
    output_dir = str(cfg.paths.output_dir)
    where = "" if output_dir == "outputs" else f" paths.output_dir={output_dir}"
    try:
        known = experiment in choices("experiment")
    except ConfigError:
        known = False
    if known:
        return f"run it first: `python -m vau fit conf={experiment}{where}`"
    return f"run the experiment named {experiment!r} first (its experiment_name, with paths.output_dir={output_dir})"


def resolve_ckpt(cfg: DictConfig) -> str | None:
    """``ckpt_path``: a path, ``last`` (this experiment's newest run) or None."""
    ckpt = cfg.get("ckpt_path")
    return newest_checkpoint(cfg, cfg.experiment_name, "ckpt_path=last") if ckpt == "last" else ckpt


def read_checkpoint(path: str | Path, key: str) -> dict:
    """The contents of checkpoint ``path`` (config key ``key`` in messages), or a ConfigError that names the path and
    why it cannot be used: missing, truncated or not a torch file, objects vau does not unpickle, no ``state_dict``.
    Like every checkpoint vau reads: tensors and plain containers only (``torch.load(weights_only=True)``)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{key}={path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        raise ConfigError(f"{key}={path} holds objects other than tensors and plain containers, which vau does not "
                          f"unpickle (torch.load(weights_only=True)): {str(err).splitlines()[0]}") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"{key}={path} is not a readable checkpoint (truncated, or not a file torch.save wrote: "
                          f"{reason}); point {key}= at a .ckpt a vau run wrote") from None
    if not isinstance(state, dict) or not isinstance(state.get("state_dict"), dict):
        raise ConfigError(f"{key}={path} is a torch file but not a Lightning checkpoint (no state_dict); point {key}= "
                          f"at a .ckpt a vau run wrote (its checkpoints/ folder)")
    return state


def check_weights_fit(model, state_dict: dict, path, key: str) -> dict:
    """The ``model.*`` weights of ``state_dict`` (prefix removed), after checking every one of them names a weight of
    ``model`` with the same shape; a checkpoint of another backbone (or other LoRA settings) fails naming ``key``."""
    weights = {k[len("model."):]: v for k, v in state_dict.items() if k.startswith("model.")}
    own = model.state_dict()
    unexpected = [k for k in weights if k not in own]
    shapes = [k for k in weights if k in own and tuple(weights[k].shape) != tuple(own[k].shape)]
    if not weights or unexpected or shapes:
        example = (shapes or unexpected or ["(none)"])[0]
        raise ConfigError(f"{key}={path} does not hold weights of this backbone ({len(weights)} model weights, "
                          f"{len(unexpected)} unknown to it, {len(shapes)} of another shape, e.g. {example}): use the "
                          f"config the checkpoint was trained with (backbone=..., lora.*)")
    return weights


def load_init_weights(module, cfg: DictConfig, key: str = "init_from") -> None:
    """``init_from``: start from the model weights of a checkpoint file, or of an experiment's newest run; ``key``
    names the setting in messages (``predict`` passes its ``ckpt``)."""
    source = cfg.get("init_from")
    if not source:
        return
    path = source if Path(source).is_file() else newest_checkpoint(cfg, source, f"{key}={source}")
    state = read_checkpoint(path, key)["state_dict"]
    weights = check_weights_fit(module.model, state, path, key)
    module.model.load_state_dict(weights, strict=False)
    log.info("initialised model weights from %s", path)


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def ensure_writable(folder: Path) -> None:
    """Create ``folder`` and check a file can be written there; a ConfigError naming it otherwise.

    Called when a fit starts, so a read-only or misplaced checkpoint folder fails at once rather than at the
    first checkpoint, after the first epoch of training.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=".write-test."):
            pass
    except OSError as err:
        raise ConfigError(f"cannot write checkpoints to {folder}: {err.strerror or err}; choose a writable "
                          f"run_dir= or paths.output_dir=") from None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file next to it, fsyncs, then renames it into place.

    A run killed mid-write (SIGKILL, preemption, OOM) leaves the previous ``last.ckpt`` intact, never a torn file.
    The file gets the mode a plain ``open()`` would give it (``0666 & ~umask``), not mkstemp's private 0600.
    """

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        import torch

        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; a checkpoint gets a plain file's mode
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        try:  # make the rename itself durable
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError:
            pass
