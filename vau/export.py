"""``python -m vau export ckpt=PATH out=DIR [merge=true] [overwrite=true] [conf=NAME] [key=value ...]``.

Turns a Lightning checkpoint of a vau run into a Hugging Face directory:

* LoRA / QLoRA run, ``merge=false`` (default): a PEFT adapter directory (``adapter_config.json`` +
  ``adapter_model.safetensors``) plus the processor. Load it with
  ``PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(BASE), DIR)``.
* LoRA / QLoRA run, ``merge=true``: the adapters merged into the base weights, saved with the processor as a
  plain model: ``AutoModelForImageTextToText.from_pretrained(DIR)``. For QLoRA the base is re-read in full
  precision (``backbone.dtype``) from ``backbone.path`` and the adapters are merged into it: the merged model is
  the adapters on the *unquantised* base, as is usual for QLoRA deployment.
* Full fine-tuning run: the model plus processor (``merge`` is ignored).

The model is rebuilt from the run's own ``config.yaml`` (next to ``checkpoints/``) unless ``conf=`` is given;
``key=value`` overrides apply on top (e.g. ``backbone.path=/models/...`` when the base checkpoint moved).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from vau.backbones.adapters import LoraSettings, uses_adapters
from vau.backbones.base import build_backbone
from vau.checkpoints import newest_checkpoint
from vau.config import ConfigError, compose, flag, split_args

log = logging.getLogger(__name__)

USAGE = ("usage: python -m vau export ckpt=PATH|last out=DIR [merge=true] [overwrite=true] [conf=NAME|PATH.yaml] "
         "[key=value ...]")
OWN_KEYS = ("ckpt", "out", "merge", "overwrite")



def run_config(ckpt: Path, conf: str | None, overrides: list[str]) -> DictConfig:
    """The config the checkpoint's run used (its ``config.yaml``), or ``conf`` composed, plus overrides."""
    if conf is not None:
        return compose(conf, overrides)
    saved = ckpt.resolve().parent.parent / "config.yaml"
    if not saved.is_file():
        raise ConfigError(f"ckpt={ckpt}: no config.yaml of its run at {saved}; pass the run's config with "
                          f"conf=NAME (and the same overrides it was trained with)")
    cfg = OmegaConf.load(saved)
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([o.lstrip("+") for o in overrides]))
    return cfg


def load_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The model weights (``model.`` prefix removed) and vau's metadata of a Lightning checkpoint file."""
    if path.is_dir():
        raise ConfigError(f"ckpt={path} is a folder (an FSDP2 distributed checkpoint): export reads single files; "
                          f"train with trainer.strategy.save_distributed_checkpoint=false")
    if not path.is_file():
        raise ConfigError(f"ckpt={path}: no such checkpoint file")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict") or {}
    weights = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    if not weights:
        raise ConfigError(f"ckpt={path} holds no model weights (state_dict keys starting with 'model.')")
    return weights, checkpoint.get("vau") or {}


EXPORT_MARKER = "vau_export.json"  # lists the files an export wrote: overwrite=true removes only those


def _foreign_files(out: Path) -> list[str]:
    """Files in ``out`` that no earlier export wrote (all of them when ``out`` has no export marker)."""
    present = sorted(str(p.relative_to(out)) for p in out.rglob("*") if not p.is_dir())
    try:
        written = set(json.loads((out / EXPORT_MARKER).read_text())["files"]) | {EXPORT_MARKER}
    except (OSError, ValueError, KeyError, TypeError):
        return present
    return [name for name in present if name not in written]


def _write_atomically(out: Path, overwrite: bool, write) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={out} is a file; give a folder for the export")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"out={out} exists and is not empty; choose another folder or pass overwrite=true")
        foreign = _foreign_files(out)
        if foreign:
            raise ConfigError(f"out={out} holds files an export did not write ({', '.join(foreign[:5])}"
                              f"{', ...' if len(foreign) > 5 else ''}); overwrite=true replaces only an earlier "
                              f"export: choose another folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write(tmp)
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if not p.is_dir() and p.name != EXPORT_MARKER)
        marker = tmp / EXPORT_MARKER
        facts = json.loads(marker.read_text()) if marker.is_file() else {}
        marker.write_text(json.dumps({**facts, "files": files}, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def export(cfg: DictConfig, ckpt: Path, out: Path, merge: bool = False, overwrite: bool = False) -> Path:
    """Write the Hugging Face export of ``ckpt`` to ``out`` (see the module docstring). Returns ``out``."""
    weights, _ = load_weights(ckpt)
    lora = LoraSettings.from_config(cfg.get("lora"))
    backbone_cfg = cfg.backbone
    if merge and lora.enabled and backbone_cfg.get("quantization"):
        # Merging into 4-bit weights would re-quantise them: merge into the full-precision base instead.
        backbone_cfg = OmegaConf.merge(backbone_cfg, {"quantization": None})
    backbone_cfg = OmegaConf.merge(backbone_cfg, {"gradient_checkpointing": False})
    backbone = build_backbone(backbone_cfg, lora=cfg.get("lora"))
    model = backbone.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if uses_adapters(model):
        # Only the adapters come from the checkpoint; the frozen base is the one at backbone.path.
        weights = {k: v for k, v in weights.items() if k in trainable}
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as err:  # shape mismatches raise even when not strict
        raise ConfigError(f"ckpt={ckpt} does not fit the model built from this config: "
                          f"{str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else err}; export "
                          f"with the run's config (the same lora.* and backbone.* it was trained with)") from None
    absent = sorted(trainable & set(missing))
    if unexpected or absent:
        raise ConfigError(f"ckpt={ckpt} does not fit the model built from this config ({len(absent)} missing, "
                          f"{len(unexpected)} unexpected weights, e.g. {(absent or list(unexpected))[:2]}): export "
                          f"with the run's config (the same lora.* and backbone.* it was trained with)")
    model.eval()

    def write(tmp: Path) -> None:
        kind = "full"
        if uses_adapters(model) and merge:
            merged = model.merge_and_unload()
            merged.save_pretrained(tmp)
            kind = "merged"
        elif uses_adapters(model):
            model.save_pretrained(tmp)
            kind = "adapter"
        else:
            model.save_pretrained(tmp)
        backbone.processor.save_pretrained(tmp)
        (tmp / "vau_export.json").write_text(json.dumps(
            {"kind": kind, "checkpoint": str(Path(ckpt).resolve()), "base": backbone.path}, indent=2))
        log.info("exported %s weights of %s to %s", kind, ckpt, out)

    _write_atomically(Path(out), overwrite, write)
    return Path(out)


def main(argv: list[str]) -> int:
    """CLI entry: parse ``ckpt= out= merge= overwrite= conf=`` and pass the rest on as config overrides."""
    conf, own, overrides = split_args(argv, own=OWN_KEYS)
    if "ckpt" not in own or "out" not in own:
        raise ConfigError(f"export needs ckpt= and out=. {USAGE}")
    ckpt = Path(own["ckpt"])
    if own["ckpt"] == "last":
        composed = compose(conf, overrides)
        ckpt = Path(newest_checkpoint(composed, composed.experiment_name, "ckpt=last"))
    if not ckpt.exists():  # before run_config, which would only say that the run's config.yaml is missing
        raise ConfigError(f"ckpt={ckpt}: no such checkpoint file")
    cfg = run_config(ckpt, conf, overrides)
    out = export(cfg, ckpt, Path(own["out"]), merge=flag(own.get("merge", "false"), "merge"),
                 overwrite=flag(own.get("overwrite", "false"), "overwrite"))
    print(f"exported {ckpt} -> {out}")
    return 0
