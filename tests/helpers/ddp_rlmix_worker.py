"""RL-Mix training steps under DistributedDataParallel, run by ``tests/training/test_ddp.py`` as
``torchrun --nproc_per_node=2 -m tests.helpers.ddp_rlmix_worker OUT_DIR`` (gloo, CPU).

Each rank trains the toy CNN on its own batches with its own ``RLMix`` (its own CPU generator) whose PPO
agent updates twice. The ranks' policies are deliberately initialised differently, so equal policies prove
the broadcast from rank 0. Every update is replayed by hand in one process from both ranks' minibatches
(gathered): each minibatch's gradient is the mean of the ranks' ``ppo_losses`` gradients, then the clip and
Adam, as a single process holding both rollouts would compute it. Each rank writes what the test checks to
``OUT_DIR/rank<r>.json``."""

from __future__ import annotations

import copy
import hashlib
import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

import rmix_fast
from rmix_fast.rl import PPOConfig, ppo
from rmix_fast.training.distributed import exit_worker
from tests.helpers.toy_task import CLASS_NAMES, ToyCNN, make_toy_images

# n_steps 4 in minibatches of 2, 2 epochs: the 5th and the 9th act each run an update of 4 Adam steps.
CONFIG = PPOConfig(n_steps=4, minibatch=2, epochs=2)
STEPS = 9
PPO_LOSSES = ppo.ppo_losses  # the untraced losses, for the replay


def checksum(module: nn.Module) -> str:
    flat = torch.cat([t.detach().flatten() for t in module.parameters()])
    return hashlib.sha256(flat.numpy().tobytes()).hexdigest()


def main(out_dir: str) -> NoReturn:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # identical initial model weights on every rank
    model = DistributedDataParallel(ToyCNN())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    data = torch.Generator().manual_seed(100 + rank)  # each rank its own shard of data
    # each rank its own generator, from which RLMix also initialises the policy: the ranks' initial policies
    # differ, and only the broadcast from rank 0 can make them equal
    mixer = rmix_fast.RLMix(len(CLASS_NAMES), generator=torch.Generator().manual_seed(200 + rank), ppo=CONFIG)
    agent = mixer.agent
    loss_fn = rmix_fast.SoftTargetCrossEntropy()
    updates = _trace_updates(agent)
    record: dict[str, Any] = {
        "rank": rank,
        "world": world,
        "initial_policy": checksum(agent.policy),
        "policy_checksums": [],
        "losses": [],
        "actions": [],
    }
    for step in range(STEPS):
        x, y = make_toy_images(16, data)
        grad, logits = rmix_fast.input_gradient(model, x, y, return_logits=True)
        x_mix, y_soft = mixer(x, y, grad, logits=logits)
        loss = loss_fn(model(x_mix), y_soft)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        mixer.after_backward()
        optimizer.step()
        if step == 5:
            mixer.end_epoch()  # an episode's end inside the second rollout: GAE stops there
        record["losses"].append(float(loss.detach()))
        record["actions"].append(mixer.last_params.actions.tolist())
        record["policy_checksums"].append(checksum(agent.policy))
    record["n_updates"] = agent.n_updates
    record["stats"] = mixer.epoch_stats()
    record.update(_replay(agent, updates, world))
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(record))
    dist.destroy_process_group()
    exit_worker(0)  # the teardown of a gloo worker can abort at exit: see exit_worker


def _trace_updates(agent: ppo.PPOAgent) -> list[dict[str, Any]]:
    """Records, for every update of ``agent``, the policy and optimizer state before it, the rollout's
    rewards, every minibatch ``ppo_losses`` saw (in order) and the gradients the Adam step was given."""
    updates: list[dict[str, Any]] = []
    update, average, losses = agent.update, agent._average_gradients, ppo.ppo_losses

    def traced_update(last_value: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        updates.append(
            {
                "policy": copy.deepcopy(agent.policy.state_dict()),
                "optimizer": copy.deepcopy(agent.optimizer.state_dict()),
                "lr": agent.learning_rate(),
                "rewards": agent.buffer.rewards.clone(),
                "minibatches": [],
                "local_losses": [],
                "grads": [],
            }
        )
        return update(last_value, generator)

    def traced_losses(policy: nn.Module, batch: dict[str, Tensor], **kwargs: Any) -> dict[str, Tensor]:
        out = losses(policy, batch, **kwargs)
        updates[-1]["minibatches"].append({k: v.clone() for k, v in batch.items()})
        updates[-1]["local_losses"].append(float(out["loss"]))
        return out

    def traced_average(params: list[nn.Parameter]) -> None:
        average(params)
        updates[-1]["grads"].append([p.grad.clone() for p in params])  # what clipping and Adam are given

    agent.update = traced_update  # instance attributes: act() calls these
    agent._average_gradients = traced_average
    ppo.ppo_losses = traced_losses  # update() looks it up in its module
    return updates


def _replay(agent: ppo.PPOAgent, updates: list[dict[str, Any]], world: int) -> dict[str, Any]:
    """Every update replayed in this one process from all ranks' minibatches: the averaged gradients and
    the policy after the update, compared with what the agent computed through the collectives."""
    c = agent.config
    out: dict[str, Any] = {"rewards": [], "local_losses": [], "mean_grads": [], "replayed_policy": []}
    for i, u in enumerate(updates):
        everyone = [None] * world
        dist.all_gather_object(everyone, u["minibatches"])  # every rank's minibatches, in rank order
        twin = copy.deepcopy(agent.policy)
        twin.load_state_dict(u["policy"])
        optimizer = torch.optim.Adam(twin.parameters(), lr=c.lr, eps=1e-5)
        optimizer.load_state_dict(u["optimizer"])
        for group in optimizer.param_groups:
            group["lr"] = u["lr"]
        params = list(twin.parameters())
        same_grads = []
        for j, seen in enumerate(u["grads"]):
            per_rank = []
            for minibatches in everyone:
                loss = PPO_LOSSES(
                    twin,
                    minibatches[j],
                    clip=c.clip,
                    ent_coef=c.ent_coef,
                    vf_coef=c.vf_coef,
                    normalize_advantage=c.normalize_advantage,
                )["loss"]
                per_rank.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
            mean = torch.stack(per_rank).sum(0) / world
            seen_flat = torch.cat([g.reshape(-1) for g in seen])
            same_grads.append(
                [bool(torch.equal(seen_flat, mean)), torch.allclose(seen_flat, mean, rtol=1e-5, atol=1e-8)]
            )
            offset = 0
            for p in params:
                p.grad = mean[offset : offset + p.numel()].view_as(p).clone()
                offset += p.numel()
            nn.utils.clip_grad_norm_(params, c.max_grad_norm)
            optimizer.step()
        after = updates[i + 1]["policy"] if i + 1 < len(updates) else agent.policy.state_dict()
        replayed = twin.state_dict()
        out["replayed_policy"].append(
            [
                all(torch.equal(replayed[k], v) for k, v in after.items()),
                all(torch.allclose(replayed[k], v, rtol=1e-5, atol=1e-7) for k, v in after.items()),
            ]
        )
        out["mean_grads"].append(same_grads)
        out["rewards"].append(u["rewards"].tolist())
        out["local_losses"].append(u["local_losses"])
    return out


if __name__ == "__main__":
    main(sys.argv[1])
