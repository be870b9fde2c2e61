"""Backbones: a loaded video VLM and its processor, plus every model-family fact generic code needs.

- :mod:`vau.backbones.base`: the :class:`~vau.backbones.base.Backbone` interface and :func:`build_backbone`
  (LoRA/QLoRA applied from the config).
- :mod:`vau.backbones.qwen`: Qwen2-VL, Qwen2.5-VL and Qwen3-VL (the only place that names them), registered in
  :data:`vau.registry.BACKBONES`; :mod:`vau.backbones.qwen_tiny` builds their tiny offline twins,
  :mod:`vau.backbones.tiny` caches them.

A new family is one plugin file with a ``Backbone`` subclass and its registered builder, plus
``conf/backbone/NAME.yaml`` (tests/test_backbone_plugin.py).
"""
