"""A few R-Mix training steps, then Manifold Mixup steps with a clean loss, under DistributedDataParallel,
run by ``tests/test_ddp.py`` as ``torchrun --nproc_per_node=2 -m tests.helpers.ddp_worker OUT_DIR`` (gloo,
CPU). Each rank writes what the test checks to ``OUT_DIR/rank<r>.json``: its losses, a hash of its
parameters (bits) after every step, whether each step's mixed batch was built from that rank's own images
only, and for the Manifold Mixup steps whether the gradients equal the ranks' mean of the written-out
clean + mixed gradients and whether any hook was left behind."""

from __future__ import annotations

import copy
import hashlib
import json
import sys
from pathlib import Path
from typing import NoReturn

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import rmix_fast
from rmix_fast import reference
from rmix_fast.training.distributed import exit_worker
from tests.helpers.toy_task import CLASS_NAMES, ToyCNN, make_toy_images

STEPS = 4


def main(out_dir: str) -> NoReturn:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
    model = DistributedDataParallel(ToyCNN())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    data = torch.Generator().manual_seed(100 + rank)  # each rank its own shard of data
    mixer = rmix_fast.RMix(len(CLASS_NAMES), generator=torch.Generator().manual_seed(200 + rank))
    loss_fn = rmix_fast.SoftTargetCrossEntropy()
    record = {"rank": rank, "world": world, "losses": [], "checksums": [], "local": [], "grads_untouched": []}
    for _ in range(STEPS):
        x, y = make_toy_images(16, data)
        before = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
        grad = rmix_fast.input_gradient(model, x, y)
        after = [p.grad for p in model.parameters()]
        record["grads_untouched"].append(
            all(
                (a is None and b is None) or (a is not None and torch.equal(a, b))
                for a, b in zip(after, before, strict=True)
            )
        )
        x_mix, y_soft = mixer(x, y, grad)
        p = mixer.last_params
        want, _, _ = reference.rmix_forward(x, grad, p.perm, p.lam, p.q, p.grid)  # from this rank's x only
        record["local"].append(bool(torch.equal(x_mix, want)) and sorted(p.perm.tolist()) == list(range(16)))
        loss = loss_fn(model(x_mix), y_soft)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        record["losses"].append(float(loss))
        flat = torch.cat([t.detach().flatten() for t in model.module.parameters()])
        record["checksums"].append(hashlib.sha256(flat.numpy().tobytes()).hexdigest())
    record.update(_manifold_with_clean_loss(model, optimizer, data, rank, world))
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(record))
    dist.destroy_process_group()
    exit_worker(0)  # the teardown of a gloo worker can abort at exit: see exit_worker


def _manifold_with_clean_loss(
    model: DistributedDataParallel, optimizer: torch.optim.Optimizer, data: torch.Generator, rank: int, world: int
) -> dict[str, list]:
    """Manifold Mixup steps with a clean loss (weight W): each rank mixes its own batch inside the forward,
    and the clean loss's gradients, kept from the pass around the wrapper, are averaged over the ranks
    together with the mixed loss's by the DDP backward. Each step's ``.grad`` is compared with the mean over
    the ranks of this rank's ``W * d clean + d mixed`` written by hand on a copy of the network."""
    W = 0.5
    K = len(CLASS_NAMES)
    loss_fn = rmix_fast.SoftTargetCrossEntropy()
    mixer = rmix_fast.ManifoldMixup(K, generator=torch.Generator().manual_seed(300 + rank))
    net = model.module
    out: dict[str, list] = {"manifold_layers": [], "manifold_grads": [], "manifold_hooks": [], "manifold_checksums": []}
    for _ in range(STEPS):
        x, y = make_toy_images(16, data)
        t = rmix_fast.soft_targets(y, K)
        twin = copy.deepcopy(net)
        again = rmix_fast.ManifoldMixup(K, generator=torch.Generator())
        again.generator.set_state(mixer.generator.get_state())  # the same draws
        params = list(twin.parameters())
        clean = torch.autograd.grad(W * loss_fn(twin(x), t), params)
        with again.mixing(x, y, layers=[twin.features[2], twin.features[5]]) as (x_in, y_soft):
            mixed = torch.autograd.grad(loss_fn(twin(x_in), y_soft), params)
        want = [c + m for c, m in zip(clean, mixed, strict=True)]
        for w in want:
            dist.all_reduce(w)
            w /= world

        optimizer.zero_grad(set_to_none=True)
        rmix_fast.clean_loss_backward(model, x, t, weight=W, loss_fn=loss_fn, input_grad=False)
        with mixer.mixing(x, y, layers=[net.features[2], net.features[5]]) as (x_in, y_soft):
            loss = loss_fn(model(x_in), y_soft)
        loss.backward()
        out["manifold_layers"].append(mixer.last_params.layer)
        out["manifold_grads"].append(
            all(torch.allclose(p.grad, w, rtol=1e-5, atol=1e-7) for p, w in zip(net.parameters(), want, strict=True))
        )
        out["manifold_hooks"].append(sum(len(m._forward_hooks) for m in net.modules()))
        optimizer.step()
        flat = torch.cat([p.detach().flatten() for p in net.parameters()])
        out["manifold_checksums"].append(hashlib.sha256(flat.numpy().tobytes()).hexdigest())
    return out


if __name__ == "__main__":
    main(sys.argv[1])
