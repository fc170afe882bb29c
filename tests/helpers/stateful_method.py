"""A test double of a learned mixer, registered as rmix-train method ``stateful``: its mix depends on
state that changes every step (a step counter, a one-weight network and that network's optimizer with
momentum), so a resumed run reproduces an uninterrupted one only if the checkpoint restores all of it.

    python -m tests.helpers.stateful_method <rmix-train options>   # rmix-train with this method added
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from rmix_fast.mixers import Mixer, MixParams
from rmix_fast.ops import BLEND, blend_regions
from rmix_fast.training.methods import Method, mixer_options, register_method
from rmix_fast.training.train import cli


class StatefulMixup(Mixer):
    """Mixup whose lam comes from a tiny network that trains itself one SGD step per batch."""

    def __init__(self, num_classes: int, **common: Any) -> None:
        super().__init__(num_classes, **common)
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        self.net = nn.Linear(1, 1)
        nn.init.constant_(self.net.weight, 0.3)
        nn.init.constant_(self.net.bias, -0.2)
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=0.05, momentum=0.9)

    def mix(self, x: Tensor, grad: Tensor | None) -> tuple[Tensor, MixParams]:
        B = x.shape[0]
        phase = (self.steps.float() * 0.37).sin().view(1, 1)
        out = self.net(phase)
        lam = torch.sigmoid(out).detach().view(()).expand(B).contiguous().to(x.device, torch.float32)
        loss = (out - 1.0).square().sum()  # the network's own training signal
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.steps += 1
        perm = torch.randperm(B, generator=self.generator).to(x.device)
        regions = torch.full((B, 1, 1), BLEND, dtype=torch.int8, device=x.device)
        mixed, lam_eff = blend_regions(x, perm=perm, lam=lam, regions=regions, backend=self.backend, validate=False)
        return mixed, MixParams(True, perm, lam, lam_eff, regions=regions)

    def get_extra_state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


register_method(
    Method("stateful", "test double of a learned mixer", lambda args, k: StatefulMixup(k, **mixer_options(args)))
)

if __name__ == "__main__":
    cli()
