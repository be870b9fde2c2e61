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
        path = Path(cfg.paths.output_dir) / cfg.experiment_name / stamp
    path.mkdir(parents=True, exist_ok=True)
    os.environ[RUN_DIR_ENV] = str(path)  # inherited by the ranks Lightning launches from this process
    return path
