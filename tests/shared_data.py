"""Where the real VAU-Bench annotation files are, if this machine has them (they are never part of the repo)."""

from pathlib import Path

_CANDIDATES = (Path(__file__).resolve().parents[2] / "shared" / "vau-bench", Path("/work/shared/vau-bench"))
SHARED = next((p for p in _CANDIDATES if p.is_dir()), _CANDIDATES[0])
