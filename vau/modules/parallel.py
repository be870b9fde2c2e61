"""Multi-device training: DDP and FSDP2 strategies from config, per-layer sharding, generation that never deadlocks.

``trainer.strategy`` in config is either a Lightning strategy name passed through as is (``auto``, ``ddp``; the
names ``fsdp`` and ``fsdp2`` mean :class:`FSDP2Strategy` with defaults, not Lightning's FSDP1) or a mapping with a
``name``:

* ``{name: ddp, find_unused_parameters: false, process_group_backend: null}`` -> Lightning ``DDPStrategy``
  (every rank holds the whole model; gloo on CPU, NCCL on GPU).
* ``{name: fsdp2, mixed_precision: {param_dtype: bfloat16, reduce_dtype: float32}, reshard_after_forward: true,
  unshard_for_generation: true, save_distributed_checkpoint: false}`` -> :class:`FSDP2Strategy`: Lightning's
  ``ModelParallelStrategy`` with ``fully_shard`` applied to every decoder layer and vision block, then the root, in
  ``configure_model`` (see :meth:`vau.modules.base.VAUModule.configure_model`).

Generation under FSDP2: every forward all-gathers parameters, a collective that all ranks must join. Ranks whose
completions hit EOS earlier would stop calling forward while the others wait in the all-gather forever. HF's
``generate(synced_gpus=True)`` keeps finished ranks stepping until all are done, but transformers only switches
it on by itself for models it sharded itself, so :func:`synced_generation` passes it explicitly. It also keeps the
layers unsharded for the whole ``generate`` call (one all-gather per layer instead of one per layer per token).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy

from vau.backbones.precision import resolve_dtype

log = logging.getLogger(__name__)

STRATEGIES = ("auto", "ddp", "fsdp2")


def _dtype(name: str | None) -> torch.dtype | None:
    if name is None:
        return None
    return resolve_dtype(name)


def mixed_precision_policy(spec: Mapping | None):
    """FSDP2 ``MixedPrecisionPolicy`` from ``{param_dtype, reduce_dtype, output_dtype}`` (None: full precision)."""
    if not spec:
        return None
    from torch.distributed.fsdp import MixedPrecisionPolicy

    unknown = set(spec) - {"param_dtype", "reduce_dtype", "output_dtype"}
    if unknown:
        raise ValueError(f"trainer.strategy.mixed_precision: unknown key(s) {sorted(unknown)}; "
                         f"use param_dtype, reduce_dtype, output_dtype")
    return MixedPrecisionPolicy(param_dtype=_dtype(spec.get("param_dtype")),
                                reduce_dtype=_dtype(spec.get("reduce_dtype")),
                                output_dtype=_dtype(spec.get("output_dtype")))


def _fsdp_module_class():
    from torch.distributed.fsdp import FSDPModule

    return FSDPModule


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The HF model under a PEFT wrapper (or the model itself)."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def block_classes(model: torch.nn.Module) -> set[str]:
    """Class names of the repeated blocks to shard one by one (HF's ``_no_split_modules``)."""
    names = set(getattr(base_model(model), "_no_split_modules", None) or [])
    if not names:
        raise ValueError(f"{type(base_model(model)).__name__} declares no _no_split_modules; cannot find its "
                         f"decoder layers to shard with trainer.strategy.name=fsdp2")
    return names


def shard_model(model: torch.nn.Module, mesh, mp_policy=None, reshard_after_forward: bool = True) -> int:
    """``fully_shard`` each decoder layer / vision block, then the root; idempotent. Returns the blocks sharded.

    The root is the HF model under any PEFT wrapper: LoRA weights live inside the blocks, so they are sharded
    with them, and the PEFT wrapper keeps working as a plain module around an FSDP module.
    """
    from torch.distributed.fsdp import fully_shard

    FSDPModule = _fsdp_module_class()
    root = base_model(model)
    if isinstance(root, FSDPModule):
        return 0
    kwargs: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    if mp_policy is not None:
        kwargs["mp_policy"] = mp_policy
    names = block_classes(model)
    blocks = [m for m in root.modules() if type(m).__name__ in names]
    for block in blocks:
        fully_shard(block, **kwargs)
    fully_shard(root, **kwargs)
    log.info("FSDP2: sharded %d blocks (%s) and the root over %d ranks", len(blocks), ", ".join(sorted(names)),
             mesh.size())
    return len(blocks)


def max_over_ranks(value: int) -> int:
    """The largest ``value`` over the processes of the default group (``value`` itself outside one)."""
    if dist.is_available() and dist.is_initialized():
        out = torch.tensor([float(value)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(out, op=dist.ReduceOp.MAX)
        return int(out.item())
    return int(value)


def any_rank(flag: bool) -> bool:
    """True when ``flag`` holds on any process of the default group (``flag`` itself outside one)."""
    return max_over_ranks(int(bool(flag))) > 0


def is_sharded(model: torch.nn.Module) -> bool:
    """True when ``model`` (or the HF model under its PEFT wrapper) is an FSDP2 module."""
    return isinstance(base_model(model), _fsdp_module_class())


@contextmanager
def synced_generation(model: torch.nn.Module, unshard: bool = True) -> Iterator[dict[str, Any]]:
    """Context for ``generate`` on a possibly FSDP2-sharded model; yields extra ``generate`` keyword arguments.

    Args:
        model: the policy (PEFT-wrapped or not).
        unshard: keep every sharded block's parameters gathered until the context exits.

    Yields:
        ``{"synced_gpus": True}`` when the model is sharded over more than one rank, else ``{}``.
    """
    if not (is_sharded(model) and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        yield {}
        return
    FSDPModule = _fsdp_module_class()
    root = base_model(model)
    # transformers 5 runs the vision encoder (`get_video_features`) *before* the first forward of the root, outside
    # its FSDP hooks: initialise FSDP's root state as a root forward would, and gather the root's own parameters
    # (patch embedding, merger, token embeddings, lm_head) for the whole call. The blocks gather themselves.
    root._get_fsdp_state()._lazy_init()
    root.unshard()
    blocks = [m for m in root.modules() if isinstance(m, FSDPModule) and m is not root]
    restore = {}
    if unshard:
        for block in blocks:
            groups = block._get_fsdp_state()._fsdp_param_groups
            restore[block] = any(g.post_forward_mesh_info is not None for g in groups)
            block.set_reshard_after_forward(False, recurse=False)
    try:
        yield {"synced_gpus": True}
    finally:
        for block, value in restore.items():
            block.reshard()  # free the gathered copy before training reuses the memory
            block.set_reshard_after_forward(value, recurse=False)
        root.reshard()


class FSDP2Strategy(ModelParallelStrategy):
    """Lightning's ``ModelParallelStrategy`` as pure FSDP2 data parallelism (no tensor parallelism).

    Args:
        mixed_precision: ``{param_dtype, reduce_dtype, output_dtype}`` for FSDP2's ``MixedPrecisionPolicy``, or None.
        reshard_after_forward: free gathered layers after forward (ZeRO-3); False keeps them until backward
            (ZeRO-2-like: more memory, less communication).
        unshard_for_generation: gather each layer once per ``generate`` call instead of once per token.
        save_distributed_checkpoint: one file per rank (a folder) instead of one full file written by rank 0.
            vau's ``export`` and ``init_from`` read full files; folders only resume.
        process_group_backend: ``gloo`` / ``nccl`` / None (by device).
    """

    def __init__(self, mixed_precision: Mapping | None = None, reshard_after_forward: bool = True,
                 unshard_for_generation: bool = True, save_distributed_checkpoint: bool = False,
                 process_group_backend: str | None = None) -> None:
        super().__init__(save_distributed_checkpoint=save_distributed_checkpoint,
                         process_group_backend=process_group_backend)
        self.mp_policy = mixed_precision_policy(mixed_precision)
        self.reshard_after_forward = bool(reshard_after_forward)
        self.unshard_for_generation = bool(unshard_for_generation)

    def setup_environment(self) -> None:
        # Every process is one data-parallel shard; ModelParallelStrategy's "auto" would make them tensor-parallel.
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()

    def shard_module(self, module) -> None:
        """Shard every model the module names (``module.modules_to_shard()``) over the data-parallel mesh."""
        mesh = self.device_mesh["data_parallel"]
        for model in module.modules_to_shard():
            shard_model(model, mesh, self.mp_policy, self.reshard_after_forward)

    def lightning_module_state_dict(self) -> dict[str, Any]:
        module = self.lightning_module
        if self._save_distributed_checkpoint or not getattr(module, "adapter_only_state", lambda: False)():
            return super().lightning_module_state_dict()
        # Adapter-only: gather just the trainable parameters instead of the whole model onto rank 0.
        from torch.distributed.tensor import DTensor

        state = {}
        for name, param in module.named_parameters():
            if param.requires_grad:
                full = param.full_tensor() if isinstance(param, DTensor) else param  # collective: all ranks
                if self.global_rank == 0:
                    state[name] = full.detach().cpu()
        return state


def build_strategy(spec: Any):
    """A Lightning strategy (object or name) from ``trainer.strategy``; see the module docstring."""
    if spec is None:
        return "auto"
    if isinstance(spec, str):
        if spec in ("fsdp2", "fsdp"):
            return FSDP2Strategy()
        return spec
    if not isinstance(spec, Mapping):
        return spec  # already a Strategy object (tests, scripts)
    options = dict(spec)
    name = options.pop("name", None)
    if name == "ddp":
        return DDPStrategy(**options)
    if name in ("fsdp2", "fsdp"):
        try:
            return FSDP2Strategy(**options)
        except TypeError as err:
            raise ValueError(f"trainer.strategy (name: {name}): {err}") from None
    raise ValueError(f"trainer.strategy.name={name!r} is not one of {', '.join(STRATEGIES)}")
