"""The non-finite guard: a run stops at the first NaN/inf loss or gradient, naming the step and the cause (a mixin of
:class:`vau.modules.base.VAUModule`)."""

from __future__ import annotations

import torch


class NonFiniteError(RuntimeError):
    """Training produced a NaN/inf loss or gradient; the message gives the global step and the cause."""


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a tensor (a DTensor shard under FSDP2), as a plain tensor."""
    return t.to_local() if hasattr(t, "to_local") else t



class NonFiniteGuard:
    """Lightning backward hooks that check the loss and the gradients before clipping and the optimiser step."""

    #: Tensors the current loss was computed from, by name (set by a training step; inspected only when the loss is
    #: not finite, to say which term is the cause).
    _loss_terms: dict[str, torch.Tensor | None] | None = None
    _backward_loss: torch.Tensor | None = None

    def on_before_backward(self, loss: torch.Tensor) -> None:
        self._backward_loss = loss.detach()

    def on_after_backward(self) -> None:
        """Stop the run at the first non-finite loss or gradient (before clipping and the optimiser step).

        Every rank takes part in one all-reduce of the verdict, so all of them raise together (a rank raising alone
        would leave the others waiting in the next collective).
        """
        cause = self._nonfinite_cause()
        self._backward_loss, self._loss_terms = None, None
        flag = torch.tensor(0.0 if cause is None else 1.0, device=self.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() > 0:
            raise NonFiniteError(
                f"non-finite training value at global step {self.global_step}: "
                f"{cause or 'found on another rank (see its log)'}. The run stops here rather than train on NaN; "
                f"lower module.optim.lr, check the data of this step, or (GRPO) the rewards")

    def _nonfinite_cause(self) -> str | None:
        loss = self._backward_loss
        if loss is not None and not bool(torch.isfinite(loss).all()):
            bad = [name for name, t in (self._loss_terms or {}).items()
                   if isinstance(t, torch.Tensor) and not bool(torch.isfinite(_local(t)).all())]
            where = f" (non-finite {', '.join(bad)})" if bad else ""
            return f"the {type(self).__name__} loss is {float(loss)}{where}"
        named = [(name, p.grad) for name, p in self.named_parameters() if p.grad is not None]
        if not named or getattr(getattr(self._trainer, "precision_plugin", None), "scaler", None) is not None:
            return None  # fp16 loss scaling (16-mixed) overflows on purpose: its scaler skips those steps itself
        if bool(torch.stack([torch.isfinite(_local(g)).all() for _, g in named]).all()):
            return None  # one check (one device sync) on the common path; the loop below runs only on failure
        for name, grad in named:
            grad = _local(grad)
            if not bool(torch.isfinite(grad).all()):
                nan, inf = int(torch.isnan(grad).sum()), int(torch.isinf(grad).sum())
                return (f"the loss is finite ({float(loss) if loss is not None else '?'}) but parameter {name!r} has "
                        f"a non-finite gradient ({nan} NaN, {inf} inf of {grad.numel()})")
        return None
