"""Processes running at the same time never share a run folder, and never read half-written demo data."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MAKE_RUN_DIR = """
import sys, time
from datetime import datetime
from pathlib import Path
from omegaconf import OmegaConf
import vau.run_dir as rd

class Frozen(datetime):  # both processes read the same clock second
    @classmethod
    def now(cls, tz=None):
        return datetime(2026, 1, 2, 3, 4, 5)

rd.datetime = Frozen
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.001)
cfg = OmegaConf.create({"run_dir": None, "experiment_name": "exp", "paths": {"output_dir": sys.argv[1]}})
print(rd.make_run_dir(cfg))
"""


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for key in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "SLURM_NTASKS", "SLURM_JOB_ID", "VAU_RUN_DIR"):
        env.pop(key, None)
    return env


def test_runs_started_in_the_same_second_get_different_run_folders(tmp_path):
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", MAKE_RUN_DIR, str(tmp_path / "out"), str(go)], cwd=ROOT,
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    time.sleep(1.0)  # let all three import and wait on the start flag
    go.touch()
    results = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in results]
    folders = sorted(out.strip() for out, _ in results)
    stamp = tmp_path / "out" / "exp" / "2026-01-02_03-04-05"
    assert folders == [str(stamp), f"{stamp}_1", f"{stamp}_2"]
    assert all(Path(f).is_dir() for f in folders)


def test_explicit_and_inherited_run_dirs_are_used_as_given(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from vau.run_dir import RUN_DIR_ENV, make_run_dir

    given = tmp_path / "given"
    given.mkdir()
    cfg = OmegaConf.create({"run_dir": str(given), "experiment_name": "exp", "paths": {"output_dir": str(tmp_path)}})
    assert make_run_dir(cfg) == given  # exists already: fine (e.g. a resumed run)
    monkeypatch.setenv(RUN_DIR_ENV, str(given))
    monkeypatch.setenv("LOCAL_RANK", "1")  # a rank Lightning started: rank 0's folder, no suffix
    cfg.run_dir = None
    assert make_run_dir(cfg) == given


GENERATE = """
import hashlib, json, logging, sys, time
from pathlib import Path
from vau.data.synthetic import generate

logging.basicConfig(level=logging.INFO)
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.001)
root = Path(generate(sys.argv[1], n_train=16, n_val=4, n_test=4, seed=3, size=64, min_seconds=1.0, max_seconds=2.0))
# what this process reads right after generate() returned
print(json.dumps({str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                  for p in sorted(root.rglob("*")) if p.is_file()}))
"""


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_concurrent_demo_generation_gives_both_processes_the_same_complete_data(tmp_path):
    root, go = tmp_path / "demo", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", GENERATE, str(root), str(go)], cwd=ROOT, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    time.sleep(1.5)  # both imported and waiting
    go.touch()
    seen, logs = [], []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        seen.append(json.loads(out.strip().splitlines()[-1]))
        logs.append(err)
    # one process wrote the data, the other waited for it and reused it (no second writer over the same files)
    assert sum("generating the demo mini-benchmark" in log for log in logs) == 1, logs
    final = _snapshot(root)
    assert json.loads((root / "demo.json").read_text())["n_train"] == 16
    assert sum(name.startswith("videos/") for name in final) == 24 and "train.csv" in final
    assert seen[0] == final and seen[1] == final  # neither process read a file the other was still writing


def test_ckpt_path_last_takes_the_newest_same_second_run(tmp_path):
    from omegaconf import OmegaConf

    from vau.checkpoints import newest_checkpoint

    for name in ("2026-01-02_03-04-05", "2026-01-02_03-04-05_2", "2026-01-02_03-04-05_10"):
        (tmp_path / "exp" / name / "checkpoints").mkdir(parents=True)
        (tmp_path / "exp" / name / "checkpoints" / "last.ckpt").touch()
    cfg = OmegaConf.create({"paths": {"output_dir": str(tmp_path)}})
    assert Path(newest_checkpoint(cfg, "exp", "ckpt_path=last")).parent.parent.name == "2026-01-02_03-04-05_10"
