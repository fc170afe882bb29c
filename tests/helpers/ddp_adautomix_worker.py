"""The worker of ``training/test_ddp.py``'s AdAutoMix collective test, started by ``torch.multiprocessing.spawn``
on 2 gloo processes: both ranks build the same model and mixer, each takes its own batch, and one step runs as
``rmix-train`` runs it under torchrun (``Trainer._owned_step``): buffers broadcast from rank 0, the mixer's
loss and backward, every gradient averaged over the ranks (``DistEnv.average_gradients``), the classifier's
and the mixer's steps. Before it, each rank computes its own gradients on copies from the same state, so the
test can check the averaged ones are exactly the ranks' mean. Writes ``OUT_DIR/rank<r>.pt``."""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist

from rmix_fast.mixers import AdAutoMix
from rmix_fast.training.distributed import DistEnv
from rmix_fast.training.models import SmallCNN

K, B, SIDE = 5, 6, 16


def rank_batch(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + rank)
    return torch.rand(B, 3, SIDE, SIDE, generator=g), torch.randint(0, K, (B,), generator=g)


def build(rank: int) -> tuple[torch.nn.Module, AdAutoMix, torch.optim.SGD]:
    torch.manual_seed(0)  # the same initial weights on both ranks
    model = SmallCNN(K, 3, widths=(4, 6, 8))
    mixer = AdAutoMix(K, generator=torch.Generator().manual_seed(rank))  # each rank its own draws
    mixer.attach(model, (3, SIDE, SIDE))
    mixer.set_total_steps(10)
    if rank == 1:  # rank 1's BatchNorm statistics start elsewhere: the broadcast must replace them
        with torch.no_grad():
            for buf in [*model.buffers(), *mixer.buffers()]:
                if buf.is_floating_point():
                    buf.add_(0.5)
    return model, mixer, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def grads(modules) -> list[torch.Tensor]:
    return [p.grad.clone() for m in modules for p in m.parameters() if p.requires_grad]


def run(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    env = DistEnv(rank=rank, world_size=world)
    try:
        model, mixer, optimizer = build(rank)
        x, y = rank_batch(rank)
        env.broadcast_([*model.buffers(), *mixer.buffers()])
        after_broadcast = [b.clone() for b in [*model.buffers(), *mixer.buffers()]]
        # this rank's own gradients, on copies from the same state and the same draws
        local_model, local_mixer = copy.deepcopy(model), copy.deepcopy(mixer)
        local_mixer.training_loss(local_model, x, y).loss.backward()
        local = grads([local_model, local_mixer])
        # the step as the trainer runs it
        out = mixer.training_loss(model, x, y)
        out.loss.backward()
        env.average_gradients([*model.parameters(), *mixer.parameters()])
        averaged = grads([model, mixer])
        optimizer.step()
        mixer.after_optimizer_step(model, lr=0.1)
        torch.save(
            {
                "after_broadcast": after_broadcast,
                "local": local,
                "averaged": averaged,
                "loss": out.loss.detach(),
                "model": model.state_dict(),
                "mixer": {k: v for k, v in mixer.state_dict().items() if isinstance(v, torch.Tensor)},
            },
            f"{out_dir}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()
