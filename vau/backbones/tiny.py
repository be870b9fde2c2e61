"""Caching of tiny random offline checkpoints (tests, the demo run, CPU benchmarks), whatever their family.

A family's :meth:`vau.backbones.base.Backbone.build_tiny` writes a real model + processor into a directory;
here that directory is built once per cache key and published atomically, and then loaded through the same
``from_pretrained`` path as a downloaded checkpoint, so tests exercise the real loading code.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

MARKER = "vau_tiny.json"  # written last: its presence means the checkpoint is complete


def ensure_checkpoint(path: Path, build: Callable[[Path, int, dict], None], seed: int, sizes: dict) -> Path:
    """``path``, built by ``build(tmp_dir, seed, sizes)`` unless a complete checkpoint is already there."""
    path = Path(path)
    if (path / MARKER).is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write to a sibling temp dir and rename: a concurrent or killed build never leaves a half checkpoint.
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".", dir=path.parent))
    try:
        build(tmp, seed, sizes)
        (tmp / MARKER).write_text(json.dumps({"seed": seed, "sizes": sizes}, indent=2))
        try:
            os.rename(tmp, path)
        except OSError:
            if not (path / MARKER).is_file():  # lost a race to another process: theirs is as good
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def teach_replies(model, inputs: dict, labels, max_steps: int = 200, lr: float = 3e-3, until: float = 0.02) -> float:
    """Teacher forcing of ``model`` on one batch (``inputs`` for its forward, ``labels`` on the target tokens) with
    Adam until its loss is below ``until`` or ``max_steps`` are spent; returns the last loss. Tests and benchmarks use
    it to get a tiny model that writes a known reply (a random one never looks again, for example)."""
    import torch

    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss = None
    for _ in range(max_steps):
        loss = model(**inputs, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < until:
            break
    return float(loss)
