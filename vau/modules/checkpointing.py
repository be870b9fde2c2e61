"""What a vau module keeps in its checkpoints besides the weights: adapter-only state dicts (LoRA/QLoRA) and every
rank's RNG state, so that a resumed run samples exactly what the uninterrupted one would have (a mixin of
:class:`vau.modules.base.VAUModule`)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from vau.backbones.adapters import uses_adapters


def rng_state() -> dict[str, Any]:
    """This process's torch / CUDA / numpy / Python RNG states, as types ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": [version, list(internal), py_gauss],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, py_gauss = state["python"]
    random.setstate((version, tuple(internal), py_gauss))



class CheckpointState:
    """Lightning checkpoint hooks of a module with ``self.model``: adapter-only state dicts and RNG states."""

    #: With LoRA/QLoRA, keep only the trainable (adapter) weights in checkpoints (config ``checkpoint.adapter_only``).
    adapter_only_checkpoint: bool = True

    def adapter_only_state(self) -> bool:
        """Whether checkpoints of this module hold only its trainable parameters."""
        return bool(self.adapter_only_checkpoint) and uses_adapters(self.model)

    @property
    def strict_loading(self) -> bool:
        # An adapter-only checkpoint lacks the frozen base weights, which come from backbone.path instead;
        # on_load_checkpoint checks the adapter keys itself.
        if self._strict_loading is not None:
            return bool(self._strict_loading)
        return not self.adapter_only_state()

    @strict_loading.setter
    def strict_loading(self, value: bool) -> None:
        self._strict_loading = value

    def _trainable_keys(self) -> set[str]:
        return {name for name, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Adapter-only state dict (LoRA/QLoRA), plus every rank's RNG state so a resumed run samples the same."""
        adapter_only = self.adapter_only_state()
        if adapter_only:
            keep = self._trainable_keys()
            state = checkpoint.get("state_dict") or {}
            checkpoint["state_dict"] = {k: v for k, v in state.items() if k in keep}
        rng = [rng_state()]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Lightning calls this hook on every rank (FSDP needs them all to gather the weights), so this is safe.
            rng = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(rng, rng_state())
        checkpoint["vau"] = {"adapter_only": adapter_only, "rng_states": rng}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check an adapter-only checkpoint matches this model's adapters; restore this rank's RNG state."""
        meta = checkpoint.get("vau") or {}
        state = checkpoint.get("state_dict")
        if meta.get("adapter_only") and state is not None:
            expected = self._trainable_keys()
            missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
            if missing or unexpected:
                raise RuntimeError(
                    f"adapter-only checkpoint does not match this model's trainable weights ({len(missing)} missing, "
                    f"{len(unexpected)} unexpected, e.g. {(missing or unexpected)[:2]}): use the same lora.* and "
                    f"backbone settings as the run that wrote it")
            # Fill in the frozen base from the freshly loaded backbone, so strict loading code paths work too.
            current = self.state_dict()
            checkpoint["state_dict"] = {**{k: v for k, v in current.items() if k not in state}, **state}
        states = meta.get("rng_states")
        if states:
            # Applied in on_train_start: between here and there Lightning builds the training DataLoader iterator,
            # which draws its base seed from the global RNG (the uninterrupted run drew it before its first step).
            self._pending_rng_state = states[self.global_rank] if self.global_rank < len(states) else states[0]

    def on_train_start(self) -> None:
        state = getattr(self, "_pending_rng_state", None)
        if state is not None:
            set_rng_state(state)
            self._pending_rng_state = None
