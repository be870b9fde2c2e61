"""A backbone added from outside vau/ is one Python file and two YAML files (docs/architecture.md): the plugin
module (its Backbone class and builder), ``backbone/NAME.yaml`` (the config group entry, in a folder beside the
experiment) and the experiment that picks it. Here the plugin is a Qwen2-VL variant with its own tiny twin
(one decoder layer), its own frame-size rule and its own LoRA targets; ``fit`` trains it with LoRA and tests it."""

from __future__ import annotations

import json
import textwrap

TOY_BACKBONE = textwrap.dedent('''
    """A user's backbone: Qwen2-VL's architecture with square frames, a one-layer tiny twin and its own LoRA targets."""
    from vau.backbones.qwen import Qwen2VLBackbone
    from vau.registry import BACKBONES

    ASKED = []  # (frames, height, width) the data pipeline asked the frame rule about


    class SquareFramesVL(Qwen2VLBackbone):
        """Qwen2-VL that sees every frame as a 56 x 56 square."""

        tiny_sizes = {**Qwen2VLBackbone.tiny_sizes, "text_layers": 1}
        lora_targets = ("q_proj", "v_proj")

        def frame_size(self):
            def square(frames, height, width):
                ASKED.append((frames, height, width))
                return 56, 56

            return square, "square56"


    @BACKBONES.register("toy_square_vl")
    def toy_square_vl(cfg):
        """Tiny random square-frame Qwen2-VL variant (a plugin example)."""
        return SquareFramesVL.load_tiny(cfg)
''')

GROUP_ENTRY = textwrap.dedent("""\
    # backbone=toy_square_vl: the tiny twin's shared keys, then this backbone's own
    defaults:
      - _tiny
      - _self_
    name: toy_square_vl
    min_pixels: 3136
    max_pixels: 3136
""")

EXPERIMENT = textwrap.dedent("""\
    # @package _global_
    defaults:
      - demo
      - override /backbone: toy_square_vl
      - _self_
    plugins: [toy_backbone]
    lora:
      enabled: true
""")


def test_a_plugin_backbone_is_one_file_and_two_yaml(tmp_path, overrides, fit_with, monkeypatch, capsys):
    import sys

    import lightning as L

    from vau.cli import main as cli_main
    from vau.config import compose
    from vau.registry import BACKBONES

    conf = tmp_path / "conf"
    (conf / "backbone").mkdir(parents=True)
    (conf / "backbone" / "toy_square_vl.yaml").write_text(GROUP_ENTRY)
    (conf / "toy.yaml").write_text(EXPERIMENT)
    (tmp_path / "toy_backbone.py").write_text(TOY_BACKBONE)
    monkeypatch.syspath_prepend(str(tmp_path))
    with BACKBONES.temporary():
        run_dir = tmp_path / "run"
        cfg = compose(str(conf / "toy.yaml"), [*overrides, f"run_dir={run_dir}", "data.task=qa"])
        assert cfg.backbone.name == "toy_square_vl" and cfg.backbone.max_pixels == 3136
        seen = []

        class Keep(L.Callback):
            def on_fit_start(self, trainer, pl_module):
                seen.append(pl_module)

        fit_with(cfg, Keep())

        plugin = sys.modules["toy_backbone"]
        assert plugin.ASKED, "the data pipeline never asked the plugin's frame rule"
        records = [json.loads(line) for line in (run_dir / "predictions_rank0.jsonl").read_text().splitlines()]
        assert records and {r["task"] for r in records} == {"qa"}
        model = seen[0].model
        assert type(seen[0].backbone).__name__ == "SquareFramesVL"
        assert model.config.text_config.num_hidden_layers == 1  # the plugin's twin, not the built-in one
        adapted = {parts[parts.index("lora_A") - 1] for parts in (name.split(".") for name, _ in model.named_parameters())
                   if "lora_A" in parts}
        assert adapted == {"q_proj", "v_proj"}, adapted  # the plugin's lora_targets (vision: off)

        capsys.readouterr()
        assert cli_main(["list", f"conf={conf / 'toy.yaml'}", *overrides]) == 0
        assert "toy_square_vl" in capsys.readouterr().out
