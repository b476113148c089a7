"""The per-sample LoRA gradient collector: forward hooks on the LoRA ``lora_A``/``lora_B`` linears
catch each layer's input x, tensor hooks on their outputs catch the output gradient delta, and a
row's weight gradient is ``sum_t delta_t x_t^T`` over that row's tokens ([B, out, in] per layer).

Lifecycle: construction validates the LoRA parameters and registers the hooks; ``track()`` arms
them for one forward pass (outside it, forwards are not recorded, so the model can run normally);
every backward through a tracked forward hands ``(parameter name, per-sample gradient)`` to the
consumer; ``close()`` (or leaving the ``with`` block) removes the hooks. The featurizer projects
what it receives, the exact-eNTK probe stores it raw: one collector, two consumers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from ntk_selector.model.loading import lora_parameters

GradientSink = Callable[[str, torch.Tensor], None]


class LoraGradientCollector:
    """Hooks that turn one batched backward into per-sample gradients of every LoRA weight."""

    def __init__(self, model: torch.nn.Module, sink: GradientSink):
        self.params = lora_parameters(model)
        if not self.params:
            raise ValueError("the model has no trainable LoRA parameters")
        modules = dict(model.named_modules())
        self._name_of: dict[torch.nn.Module, str] = {}
        for name, _ in self.params:
            mod_name, _, leaf = name.rpartition(".")
            if leaf != "weight" or not isinstance(modules.get(mod_name), torch.nn.Linear):
                raise ValueError(f"unsupported LoRA parameter {name} (only linear LoRA A/B weights)")
            self._name_of[modules[mod_name]] = name
        self.sink = sink
        self._armed = False
        self._handles = [m.register_forward_hook(self._on_forward) for m in self._name_of]

    @property
    def tensors(self) -> list[torch.Tensor]:
        """The LoRA weights, in ``named_parameters()`` order (the targets of ``autograd.grad``)."""
        return [p for _, p in self.params]

    def _on_forward(self, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if not self._armed or not output.requires_grad:
            return
        x = inputs[0].detach()
        name = self._name_of[module]

        def on_grad(delta: torch.Tensor) -> None:
            self.sink(name, torch.einsum("bto,bti->boi", delta.float(), x.float()))

        output.register_hook(on_grad)

    @contextmanager
    def track(self) -> Iterator[None]:
        """Record the LoRA activations of the forward passes run inside (with gradients enabled)."""
        self._armed = True
        try:
            with torch.enable_grad():
                yield
        finally:
            self._armed = False

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> LoraGradientCollector:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
