"""The run folder: one per run, shared by every rank of a multi-process job."""

from __future__ import annotations

import logging
import os
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig

log = logging.getLogger(__name__)

RUN_DIR_ENV = "VAU_RUN_DIR"


def make_run_dir(cfg: DictConfig) -> Path:
    """``run_dir``, or ``output_dir/experiment_name/<timestamp>``; the same folder on every rank of a job.

    A timestamped folder is created exclusively: a run started in the same second as another gets
    ``<timestamp>_1`` (``_2``, ...). An explicit ``run_dir`` is used as given (it may exist: e.g. to resume).

    Lightning starts ranks 1..N-1 of a single-node job by re-running the command, seconds later: they take rank
    0's folder from the environment. Under SLURM / torchrun (processes started outside vau) the folder is named
    after the job id; without one, pass ``run_dir=`` explicitly.
    """
    inherited = os.environ.get(RUN_DIR_ENV) if int(os.environ.get("LOCAL_RANK", "0") or 0) > 0 else None
    if cfg.get("run_dir"):
        path = Path(cfg.run_dir)
    elif inherited:
        path = Path(inherited)
    else:
        stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        if int(os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_NTASKS") or 1) > 1:
            # Ranks started by srun / torchrun: a clock reading may differ between them, the job id does not.
            job = os.environ.get("SLURM_JOB_ID") or os.environ.get("TORCHELASTIC_RUN_ID", "none")
            if job and job != "none":
                stamp = f"job{job}"
            else:
                log.warning("ranks started outside vau without a job id may pick different run folders: "
                            "pass run_dir=... (or torchrun --rdzv-id)")
        shared = stamp.startswith("job")  # every rank of the job computes this name and must share it
        path = Path(cfg.paths.output_dir) / cfg.experiment_name / stamp
        if not shared and int(os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_NTASKS") or 1) <= 1:
            path = _create_unique(path)
    path.mkdir(parents=True, exist_ok=True)
    os.environ[RUN_DIR_ENV] = str(path)  # inherited by the ranks Lightning launches from this process
    return path


def _create_unique(path: Path) -> Path:
    """Create ``path``, or ``path_1``, ``path_2``, ... if taken: two runs started in the same second never share a
    folder (one config.yaml, mixed checkpoints and TensorBoard files). ``mkdir`` without ``exist_ok`` is atomic, so
    of two processes racing for one name exactly one gets it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for suffix in range(10000):
        candidate = path if suffix == 0 else path.with_name(f"{path.name}_{suffix}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise RuntimeError(f"no free run folder name next to {path} (tried 10000); pass run_dir=...")
