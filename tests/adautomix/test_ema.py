"""The teacher's momentum schedule (OpenMixup's CosineScheduleHook) and its EMA update (AdAutoMix.momentum_update)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from rmix_fast.adautomix import EmaTeacher, ema_momentum, ema_update_, frozen_copy


def hook_momentum(cur_iter: int, max_iters: int, base_m: float, end_momentum: float, scope0: float) -> float:
    """CosineScheduleHook.before_train_iter with adjust_scope=[scope0, 1.0], warming_up="constant" and the
    default restart_step, transcribed branch by branch in float64 (Python floats)."""
    restart_step = int(min(max(1e11, 1), 1e10))
    max_iter = max_iters  # adjust_scope[1] = 1.0 is not < 1
    min_iter = int(max_iters * scope0) if scope0 > 0 else 0
    if min_iter <= cur_iter <= max_iter:
        if cur_iter % restart_step == 0:
            return 0.0
        return end_momentum - (end_momentum - base_m) * (math.cos(math.pi * cur_iter / float(max_iter)) + 1) / 2
    assert cur_iter < min_iter
    return base_m


CONFIGS = {"cifar": 0.999999, "imagenet": 0.99999}


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("total", [1000, 200_000, 1037])
def test_momentum_matches_the_hook(config, total):
    end = CONFIGS[config]
    switch = int(total * 0.1)
    for t in (0, 1, switch - 1, switch, switch + 1, total // 2, total - 1, total):
        got = ema_momentum(t, total, base=0.999, end=end, warmup=0.1)
        assert got == pytest.approx(hook_momentum(t, total, 0.999, end, 0.1), abs=1e-15), t
    assert ema_momentum(0, total, end=end) == 0.999
    assert ema_momentum(switch - 1, total, end=end) == 0.999
    # t is the absolute iteration over all of them: the schedule resumes near cos(0.1 pi), a small jump up
    jump = end - (end - 0.999) * (math.cos(math.pi * switch / total) + 1) / 2
    assert ema_momentum(switch, total, end=end) == pytest.approx(jump, abs=1e-15)
    assert 0.999 < jump < 0.99903
    assert ema_momentum(total, total, end=end) == pytest.approx(end, abs=1e-15)
    if total % 2 == 0:
        assert ema_momentum(total // 2, total, end=end) == pytest.approx((end + 0.999) / 2, abs=1e-15)


def test_momentum_at_the_switch_for_the_configs():
    assert ema_momentum(99, 1000) == 0.999
    assert ema_momentum(100, 1000) == pytest.approx(0.999999 - 0.000999 * (math.cos(0.1 * math.pi) + 1) / 2, abs=1e-15)
    assert ema_momentum(100, 1000) == pytest.approx(0.9990245, abs=1e-7)
    assert ema_momentum(100, 1000, end=0.99999) == pytest.approx(0.9990242, abs=1e-7)


def test_momentum_rises_after_the_switch():
    ms = [ema_momentum(t, 500) for t in range(50, 501)]
    assert all(a < b for a, b in itertools.pairwise(ms))


def test_momentum_restart_quirk_without_warmup():
    # the hook's restart check (t % 1e10 == 0) fires at t = 0 once the in-scope range starts there
    assert ema_momentum(0, 1000, warmup=0.0) == 0.0
    assert ema_momentum(0, 9) == 0.0  # int(9 * 0.1) == 0
    assert ema_momentum(0, 10) == 0.999
    assert ema_momentum(1, 1000, warmup=0.0) == pytest.approx(hook_momentum(1, 1000, 0.999, 0.999999, 0.0), abs=1e-15)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(step=-1, total_steps=10), "step"),
        (dict(step=11, total_steps=10), "step"),
        (dict(step=1.0, total_steps=10), "step"),
        (dict(step=0, total_steps=0), "total_steps"),
        (dict(step=0, total_steps=10, base=0.9999999), "base"),
        (dict(step=0, total_steps=10, end=1.5), "end"),
        (dict(step=0, total_steps=10, warmup=-0.1), "warmup"),
        (dict(step=0, total_steps=10, warmup=float("nan")), "warmup"),
    ],
)
def test_momentum_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ema_momentum(**kwargs)


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))


def loop_update(teacher: nn.Module, student: nn.Module, m: float) -> None:
    """AdAutoMix.momentum_update: one new tensor per parameter."""
    for param_q, param_k in zip(student.parameters(), teacher.parameters(), strict=True):
        param_k.data = param_k.data * m + param_q.data * (1.0 - m)


@pytest.mark.parametrize("m", [0.999, 0.9990245, 0.99999, 0.999999, 0.5])
def test_update_equals_the_loop_and_leaves_buffers(m):
    student = small_net()
    teacher = EmaTeacher(student)
    reference = frozen_copy(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    # k's BatchNorm statistics come from k's own forwards, so they differ from q's
    x = torch.randn(4, 3, 6, 6)
    teacher(x)
    reference(x)
    student(x + 1)
    buffers = {n: b.clone() for n, b in teacher.module.named_buffers()}
    pairs = zip(teacher.parameters(), student.parameters(), strict=True)
    exact = [k.double() * m + q.double() * (1 - m) for k, q in pairs]
    teacher.update(student, m)
    loop_update(reference, student, m)
    for ours, loop, want in zip(teacher.parameters(), reference.parameters(), exact, strict=True):
        # the loop rounds three float32 operations and m itself: "to 1e-7" means 1e-7 plus two float32 ulps
        torch.testing.assert_close(ours, loop, atol=1e-7, rtol=2.4e-7)
        # lerp rounds once: within one ulp of the float64 formula
        torch.testing.assert_close(ours.double(), want, atol=1e-7, rtol=1.2e-7)
    for n, b in teacher.module.named_buffers():
        assert torch.equal(b, buffers[n]), n
    assert not torch.equal(teacher.module[1].running_mean, student[1].running_mean)


def test_update_edges_and_frozen_teacher():
    student = small_net()
    teacher = EmaTeacher(student)
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())
    assert len(list(teacher.parameters())) == len(list(student.parameters()))  # the student is not a submodule
    with torch.no_grad():
        for p in student.parameters():
            p.mul_(2).add_(0.1)
    before = [p.clone() for p in teacher.parameters()]
    teacher.update(student, 1.0)  # momentum >= 1: momentum_update returns early
    teacher.update(student, 1.5)
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters(), strict=True))
    teacher.update(student, 0.0)  # the restart value copies q
    assert all(torch.equal(a, b) for a, b in zip(teacher.parameters(), student.parameters(), strict=True))
    loss = student(torch.randn(2, 3, 6, 6)).sum() + teacher(torch.randn(2, 3, 6, 6)).sum()
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    for bad in (-0.1, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="momentum"):
            teacher.update(student, bad)


def test_one_foreach_call_per_device_and_dtype(monkeypatch):
    calls = []
    real = torch._foreach_lerp_

    def counting(ks, qs, w):
        calls.append((len(ks), ks[0].dtype, ks[0].device.type))
        return real(ks, qs, w)

    monkeypatch.setattr(torch, "_foreach_lerp_", counting)
    student = small_net()
    teacher = EmaTeacher(student)
    teacher.update(student, 0.9)
    assert calls == [(len(list(student.parameters())), torch.float32, "cpu")]
    # mixed dtypes (and devices) across pairs: one fused call per group, the result as per tensor
    calls.clear()
    ks = [torch.zeros(3), torch.zeros(2, dtype=torch.float64), torch.zeros(4), torch.zeros(1, device="meta")]
    qs = [torch.ones(3), torch.ones(2, dtype=torch.float64), torch.ones(4), torch.ones(1, device="meta")]
    ema_update_(ks, qs, 0.75)
    assert sorted(calls, key=str) == sorted(
        [(2, torch.float32, "cpu"), (1, torch.float64, "cpu"), (1, torch.float32, "meta")], key=str
    )
    for k in ks[:3]:
        assert torch.equal(k, torch.full_like(k, 0.25))


def test_mismatched_pairs_raise_clearly():
    with pytest.raises(ValueError, match=r"#1 must match.*float16"):
        ema_update_([torch.zeros(2), torch.zeros(2)], [torch.zeros(2), torch.zeros(2, dtype=torch.float16)], 0.9)
    with pytest.raises(ValueError, match=r"#0 must match.*meta"):
        ema_update_([torch.zeros(2)], [torch.zeros(2, device="meta")], 0.9)
    with pytest.raises(ValueError, match=r"#0 must match.*\(3,\)"):
        ema_update_([torch.zeros(2)], [torch.zeros(3)], 0.9)
    with pytest.raises(ValueError, match="as many tensors"):
        ema_update_([torch.zeros(2)], [], 0.9)
    with pytest.raises(ValueError, match="floating point"):
        ema_update_([torch.zeros(2, dtype=torch.int64)], [torch.zeros(2, dtype=torch.int64)], 0.9)
    student = small_net()
    teacher = EmaTeacher(student)
    with pytest.raises(ValueError, match=r"4\.weight must match"):
        teacher.update(nn.Sequential(*list(student)[:4], nn.Linear(8 * 4 * 4, 5).double()), 0.9)
    with pytest.raises(ValueError, match="named as the teacher"):
        teacher.update(nn.Sequential(nn.ModuleDict({"module": student})), 0.9)


@pytest.mark.cuda
def test_update_across_cpu_and_cuda():
    ks = [torch.zeros(3), torch.zeros(3, device="cuda")]
    qs = [torch.ones(3), torch.ones(3, device="cuda")]
    ema_update_(ks, qs, 0.5)
    assert all(torch.equal(k.cpu(), torch.full((3,), 0.5)) for k in ks)
