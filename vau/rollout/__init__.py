"""Rollout engines: what generates completions for GRPO, evaluation (greedy, two-pass self-correction) and
``predict`` (``module.generation.engine``; registry :data:`vau.registry.ROLLOUT_ENGINES`).

:class:`vau.rollout.engine.RolloutEngine` is the contract; ``hf`` (:mod:`vau.rollout.hf`) implements it with the
policy's own ``generate`` (the shared-prompt and repeated-prompt GRPO paths). docs/architecture.md, "Rollout
engines", says what a vLLM or SGLang engine would implement.
"""
