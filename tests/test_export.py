"""``python -m vau export``: Lightning checkpoints -> Hugging Face folders that transformers / PEFT load as is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vau.cli import main
from vau.config import compose
from vau.run import run

ROOT = Path(__file__).resolve().parent.parent
LORA = ["lora.enabled=true", "lora.r=4", "lora.dropout=0.0", "module.optim.lr=1e-2"]


def _fit(overrides, run_dir: Path, extra) -> Path:
    run("fit", compose("demo", [*overrides, f"run_dir={run_dir}", "trainer.max_steps=1", "test_after_fit=false",
                                "trainer.limit_val_batches=0", *extra]))
    return run_dir / "checkpoints" / "last.ckpt"


def _inputs(overrides) -> dict[str, torch.Tensor]:
    """Prompt inputs (video + question) of the first two training clips, as the model sees them."""
    from vau.backbones.base import build_backbone
    from vau.datamodules.encoding import model_inputs
    from vau.datamodules.vau_bench import VAUBenchDataModule

    cfg = compose("demo", overrides)
    backbone = build_backbone(cfg.backbone)
    dm = VAUBenchDataModule(cfg.data, cfg.sampler, backbone, backbone.pad_id, with_target=False)
    dm.setup("fit")
    return model_inputs(next(iter(dm.train_dataloader())), prompt_only=True)


def _trained_logits(overrides, run_dir: Path, extra, inputs) -> torch.Tensor:
    """Logits of the trained model as vau rebuilds it from the checkpoint (the reference for the round trip)."""
    from vau.backbones.base import build_backbone
    from vau.export import load_weights

    cfg = compose("demo", [*overrides, *extra])
    model = build_backbone(cfg.backbone, lora=cfg.get("lora")).model
    weights, _ = load_weights(run_dir / "checkpoints" / "last.ckpt")
    model.load_state_dict(weights, strict=False)
    with torch.no_grad():
        return model.eval()(**inputs).logits


@pytest.fixture(scope="module")
def lora_run(cache_dir, demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora_run")
    overrides = [f"paths.cache_dir={cache_dir}", f"data.root={demo_root}", "data.generate=null",
                 f"paths.output_dir={out / 'outputs'}", "trainer.enable_progress_bar=false", "data.batch_size=2"]
    return overrides, _fit(overrides, out / "run", LORA)


def test_adapter_export_loads_with_peft_and_gives_the_same_logits(lora_run, tiny_path, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    overrides, ckpt = lora_run
    out = tmp_path / "adapter"
    # the real CLI, in a subprocess; the run's own config.yaml rebuilds the model
    proc = subprocess.run([sys.executable, "-m", "vau", "export", f"ckpt={ckpt}", f"out={out}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "adapter_config.json").is_file() and json.loads((out / "vau_export.json").read_text())["kind"] == "adapter"
    inputs = _inputs(overrides)
    expected = _trained_logits(overrides, ckpt.parent.parent, LORA, inputs)
    base = AutoModelForImageTextToText.from_pretrained(tiny_path)
    with torch.no_grad():
        untrained = base.eval()(**inputs).logits
        loaded = PeftModel.from_pretrained(base, out).eval()(**inputs).logits
    torch.testing.assert_close(loaded, expected, atol=0, rtol=0)
    assert not torch.allclose(untrained, expected)  # the adapters change the model
    AutoProcessor.from_pretrained(out)  # the processor travels with the adapter


def test_merged_export_is_a_plain_model_with_the_same_logits(lora_run, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    overrides, ckpt = lora_run
    out = tmp_path / "merged"
    assert main(["export", f"ckpt={ckpt}", f"out={out}", "merge=true"]) == 0
    inputs = _inputs(overrides)
    expected = _trained_logits(overrides, ckpt.parent.parent, LORA, inputs)
    model = AutoModelForImageTextToText.from_pretrained(out)
    assert not any("lora" in n for n, _ in model.named_parameters())
    with torch.no_grad():
        got = model.eval()(**inputs).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)  # merging reorders float sums
    assert AutoProcessor.from_pretrained(out).tokenizer is not None


def test_full_finetuning_export_round_trips_exactly(cache_dir, demo_root, tmp_path):
    from transformers import AutoModelForImageTextToText

    overrides = [f"paths.cache_dir={cache_dir}", f"data.root={demo_root}", "data.generate=null",
                 f"paths.output_dir={tmp_path / 'outputs'}", "trainer.enable_progress_bar=false", "data.batch_size=2"]
    ckpt = _fit(overrides, tmp_path / "run", [])
    out = tmp_path / "full"
    assert main(["export", f"ckpt={ckpt}", f"out={out}"]) == 0
    inputs = _inputs(overrides)
    expected = _trained_logits(overrides, tmp_path / "run", [], inputs)
    with torch.no_grad():
        got = AutoModelForImageTextToText.from_pretrained(out).eval()(**inputs).logits
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_qlora_adapters_load_on_a_4_bit_base_and_merge_into_the_full_precision_one(cache_dir, demo_root, tiny_path,
                                                                                    tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from vau.backbones.quantization import quantization_kwargs
    from vau.backbones.qwen import Qwen2_5VLBackbone

    qlora = ["backbone.quantization=nf4", *LORA]
    overrides = [f"paths.cache_dir={cache_dir}", f"data.root={demo_root}", "data.generate=null",
                 f"paths.output_dir={tmp_path / 'outputs'}", "trainer.enable_progress_bar=false", "data.batch_size=2"]
    ckpt = _fit(overrides, tmp_path / "run", qlora)
    assert main(["export", f"ckpt={ckpt}", f"out={tmp_path / 'adapter'}"]) == 0
    assert main(["export", f"ckpt={ckpt}", f"out={tmp_path / 'merged'}", "merge=true"]) == 0
    inputs = _inputs(overrides)
    expected = _trained_logits(overrides, tmp_path / "run", qlora, inputs)
    nf4 = quantization_kwargs({"quantization": "nf4", "dtype": "float32"}, Qwen2_5VLBackbone.vision_module_prefixes)
    four_bit = AutoModelForImageTextToText.from_pretrained(tiny_path, **nf4)
    from vau.backbones.quantization import prepare_4bit_model

    prepare_4bit_model(four_bit)
    full = AutoModelForImageTextToText.from_pretrained(tiny_path)
    merged = AutoModelForImageTextToText.from_pretrained(tmp_path / "merged")
    with torch.no_grad():
        on_4bit = PeftModel.from_pretrained(four_bit, tmp_path / "adapter").eval()(**inputs).logits
        on_full = PeftModel.from_pretrained(full, tmp_path / "adapter").eval()(**inputs).logits
        got_merged = merged.eval()(**inputs).logits
    torch.testing.assert_close(on_4bit, expected, atol=0, rtol=0)  # the QLoRA model, exactly
    torch.testing.assert_close(got_merged, on_full, atol=1e-4, rtol=1e-4)  # adapters on the unquantised base
    assert not torch.allclose(got_merged, expected, atol=1e-4)  # ... which is not the 4-bit model


def test_export_refuses_a_non_empty_folder_and_a_mismatched_config(lora_run, tmp_path, capsys):
    _, ckpt = lora_run
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    assert main(["export", f"ckpt={ckpt}", f"out={tmp_path / 'busy'}"]) == 2
    assert "overwrite=true" in capsys.readouterr().err
    assert main(["export", f"ckpt={ckpt}", f"out={tmp_path / 'x'}", "lora.r=8"]) == 2  # adapters of another shape
    assert "run's config" in capsys.readouterr().err
    assert main(["export", f"out={tmp_path / 'y'}"]) == 2
    assert "ckpt=" in capsys.readouterr().err


def test_export_overwrite_replaces_only_an_earlier_export(lora_run, tmp_path, capsys):
    _, ckpt = lora_run
    out = tmp_path / "exp"
    assert main(["export", f"ckpt={ckpt}", f"out={out}"]) == 0
    listed = json.loads((out / "vau_export.json").read_text())
    assert listed["kind"] == "adapter" and "adapter_config.json" in listed["files"]
    assert main(["export", f"ckpt={ckpt}", f"out={out}", "overwrite=true"]) == 0  # an earlier export: replaced
    (out / "my_notes.txt").write_text("mine")
    assert main(["export", f"ckpt={ckpt}", f"out={out}", "overwrite=true"]) == 2
    assert "my_notes.txt" in capsys.readouterr().err and (out / "my_notes.txt").read_text() == "mine"
