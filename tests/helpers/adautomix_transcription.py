"""``AdaptiveMask.forward`` (JinXins/Adversarial-AutoMixup, ``openmixup/models/heads/Ada_mix_pine.py``)
transcribed as literally as plain torch allows, in float64, with the weights taken from a ``MaskGenerator``.

Kept from the published code, line for line: the two-source path (``normal_mix`` + ``caculate_attention``:
source 0 gets lam, source 1 gets 1 - lam as its lam channel) apart from the N > 2 path (``co_mix`` +
``co_caculate_attention``: lam[i] per source); every 1x1 ``ConvModule`` called once per source (so BatchNorm
in training mode takes per-source statistics and updates its running statistics per call, q before k,
source by source); the attention as the sum over j != i of the N(N - 1) matmuls q_i k_j; the inf clamp; the
``/ inter_channels ** 0.5``; the softmax over keys; the NaN replacement; the published ``b, c, w, h =
size()`` naming (so only square maps run, as published); ``F.interpolate(scale_factor=...)`` and the softmax
over sources.

Changed, and only these: ``.type(torch.float32)`` becomes the working dtype (float64 here); the
``torch.zeros(...).cuda()`` accumulator is allocated on the features' device; mmcv's ``ConvModule`` is
written out as conv, ``F.batch_norm`` (eps 1e-5, momentum 0.1), ReLU; the debug plots are dropped; and
``hw_as_coded=False`` (for non-square maps only) takes (h, w) in their true order where the code swaps them.
"""

# The published unpackings (b, c, w, h = ...) are kept as written, unused names and all.
# ruff: noqa: RUF059

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class _ConvModuleState:
    """One ``ConvModule``'s tensors: the conv weight and bias (None with a norm) and the BatchNorm's."""

    weight: Tensor
    bias: Tensor | None
    bn_weight: Tensor | None = None
    bn_bias: Tensor | None = None
    running_mean: Tensor | None = None
    running_var: Tensor | None = None
    calls: int = 0


@dataclass
class Transcription:
    """The published module's state and flags, the tensors in the working dtype (``dtype``)."""

    conv_q: _ConvModuleState
    conv_k: _ConvModuleState
    v_weight: Tensor
    v_bias: Tensor
    inter_channels: int
    lam_concat: bool
    use_scale: bool
    training: bool
    dtype: torch.dtype = torch.float64
    hw_as_coded: bool = True
    overflow: int = 0
    nan_replaced: list[str] = field(default_factory=list)

    # ---- mmcv ConvModule(conv -> norm -> ReLU) ----
    def _conv_module(self, m: _ConvModuleState, x: Tensor) -> Tensor:
        x = F.conv2d(x, m.weight, m.bias)
        if m.bn_weight is not None:
            m.calls += 1
            x = F.batch_norm(
                x, m.running_mean, m.running_var, m.bn_weight, m.bn_bias, self.training, momentum=0.1, eps=1e-5
            )
        return F.relu(x)

    def conv_q_(self, x: Tensor) -> Tensor:
        return self._conv_module(self.conv_q, x)

    def conv_k_(self, x: Tensor) -> Tensor:
        return self._conv_module(self.conv_k, x)

    def conv_v_(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.v_weight, self.v_bias)

    def _hw(self, f: Tensor) -> tuple[int, int, int, int]:
        b, c, w, h = f.size()  # the published naming: "w" is the height, "h" the width
        if not self.hw_as_coded:
            h, w = w, h
        return b, c, w, h

    # ---- caculate_attention (two sources) ----
    def caculate_attention(self, f_map: Tensor, f_map_: Tensor) -> tuple[Tensor, Tensor]:
        b, c, w, h = self._hw(f_map)
        t = self.dtype
        q, k = (
            self.conv_q_(f_map).view(b, self.inter_channels, -1).permute(0, 2, 1),
            self.conv_k_(f_map).view(b, self.inter_channels, -1),
        )
        q_, k_ = (
            self.conv_q_(f_map_).view(b, self.inter_channels, -1).permute(0, 2, 1),
            self.conv_k_(f_map_).view(b, self.inter_channels, -1),
        )
        attn = torch.matmul(q.type(t), k_.type(t)).type(t)
        attn_ = torch.matmul(q_.type(t), k.type(t)).type(t)
        if torch.any(torch.isinf(attn)):
            attn = attn.type(t).clamp(min=-1e25, max=1e25)
            self.overflow += 1
        if torch.any(torch.isinf(attn_)):
            attn_ = attn_.type(t).clamp(min=-1e25, max=1e25)
            self.overflow += 1
        if self.use_scale:
            attn /= self.inter_channels**0.5
            attn_ /= self.inter_channels**0.5
        attn_soft, attn_soft_ = attn.type(t).softmax(dim=-1), attn_.type(t).softmax(dim=-1)
        return attn_soft, attn_soft_

    # ---- co_caculate_attention (N > 2 sources) ----
    def co_caculate_attention(self, feature_map: list[Tensor]) -> list[Tensor]:
        b, c, w, h = self._hw(feature_map[0])
        t = self.dtype
        q, k, attn = [], [], []
        for i in range(0, len(feature_map)):
            q.append(self.conv_q_(feature_map[i]).view(b, self.inter_channels, -1).permute(0, 2, 1))
            k.append(self.conv_k_(feature_map[i]).view(b, self.inter_channels, -1))
        for i in range(0, len(q)):
            b, c, p = k[0].size()
            co_attn = torch.zeros(b, p, p, dtype=t, device=q[i].device)  # published: torch.zeros(b, p, p).cuda()
            for j in range(0, len(k)):
                if i != j:
                    co_attn += torch.matmul(q[i].type(t), k[j].type(t))
            if torch.any(torch.isinf(co_attn)):
                co_attn = co_attn.type(t).clamp(min=-1e25, max=1e25)
            if self.use_scale:
                co_attn /= self.inter_channels**0.5
            co_attn = co_attn.type(t).softmax(dim=-1)
            attn.append(co_attn)
        return attn

    # ---- normal_mix (two sources) ----
    def normal_mix(self, f_map: Tensor, f_map_: Tensor, lam: float) -> Tensor:
        b, c, w, h = self._hw(f_map)
        t = self.dtype
        if self.lam_concat:
            lam_block = torch.zeros([b, 1, h, w]).to(f_map)
            lam_block[:] = lam
            f_map = torch.cat([f_map, lam_block], dim=1)
            f_map_ = torch.cat([f_map_, 1 - lam_block], dim=1)
        v, v_ = f_map, f_map_
        v = self.conv_v_(v).view(b, 1, -1).permute(0, 2, 1)
        v_ = self.conv_v_(v_).view(b, 1, -1).permute(0, 2, 1)
        attn, attn_ = self.caculate_attention(f_map, f_map_)
        mask_lam = torch.matmul(attn.type(t), v.type(t)).view(b, 1, h, w)
        mask_lam_ = torch.matmul(attn_.type(t), v_.type(t)).view(b, 1, h, w)
        mask = torch.cat([mask_lam, mask_lam_], dim=1)
        if torch.any(torch.isnan(mask)):
            mask_lam = torch.matmul(attn.type(torch.float64), v.type(torch.float64)).reshape(b, 1, w, h)
            mask_lam_ = torch.matmul(attn_.type(torch.float64), v_.type(torch.float64)).reshape(b, 1, w, h)
            mask_lam = torch.where(torch.isnan(mask_lam), torch.full_like(mask_lam, 1e-4), mask_lam)
            mask_lam_ = torch.where(torch.isnan(mask_lam_), torch.full_like(mask_lam_, 1e4), mask_lam_)
            mask = torch.cat([mask_lam, mask_lam_], dim=1)
            self.overflow += 1
            self.nan_replaced.append("normal_mix")
        return mask

    # ---- co_mix (N > 2 sources) ----
    def co_mix(self, feature_map: list[Tensor], lam: Sequence[float]) -> Tensor:
        b, c, w, h = self._hw(feature_map[0])
        t = self.dtype
        if self.lam_concat:
            for i in range(0, len(feature_map)):
                lam_block = torch.zeros([b, 1, h, w]).to(feature_map[i])
                lam_block[:] = lam[i]
                feature_map[i] = torch.cat([feature_map[i], lam_block], dim=1)
        v = []
        for i in range(0, len(feature_map)):
            v.append(feature_map[i])
            v[i] = self.conv_v_(v[i]).view(b, 1, -1).permute(0, 2, 1)
        attn = self.co_caculate_attention(feature_map)
        mask_zero = torch.matmul(attn[0].type(t), v[0].type(t)).view(b, 1, h, w)
        mask_list = [mask_zero]
        for i in range(1, len(v)):
            mask_lam = torch.matmul(attn[i].type(t), v[i].type(t)).view(b, 1, h, w)
            mask_list.append(mask_lam)
            if i == 1:
                mask = torch.cat([mask_zero, mask_list[i]], dim=1)
            else:
                mask = torch.cat([mask, mask_list[i]], dim=1)
        if torch.any(torch.isnan(mask)):
            self.nan_replaced.append("co_mix")
            for i in range(0, len(mask_list)):
                mask_list[i] = torch.matmul(attn[i].type(torch.float64), v[i].type(torch.float64)).reshape(b, 1, w, h)
                mask_list[i] = torch.where(torch.isnan(mask_list[i]), torch.full_like(mask_list[i], 0.3), mask_list[i])
                mask_zero = mask_list[0]
                if i == 1:
                    mask = torch.cat([mask_zero, mask_list[i]], dim=1)
                elif i > 1:
                    mask = torch.cat([mask, mask_list[i]], dim=1)
        return mask

    # ---- forward, split at the point MaskGenerator returns (before the upsampling) ----
    def mask_logits(self, f_maps: list[Tensor], lam: float | Sequence[float]) -> Tensor:
        """The published ``forward`` up to (not including) ``F.interpolate``: the (B, N, h, w) pre-softmax map.
        ``lam`` as published: a float for two sources (lam and 1 - lam), one per source for more."""
        f_maps = list(f_maps)  # co_mix rewrites its list in place
        if len(f_maps) == 2:
            return self.normal_mix(f_maps[0], f_maps[1], lam)  # type: ignore[arg-type]
        if len(f_maps) > 2:
            return self.co_mix(f_maps, lam)  # type: ignore[arg-type]
        raise ValueError("the published forward has no branch for fewer than 2 sources (`mask` is unbound)")

    def forward(self, f_maps: list[Tensor], lam: float | Sequence[float], scale_factor: int, mode: str) -> Tensor:
        mask = self.mask_logits(f_maps, lam)
        mask = F.interpolate(mask, scale_factor=scale_factor, mode=mode)
        return mask.softmax(dim=1)


def _conv_state(block: torch.nn.Module, dtype: torch.dtype, requires_grad: bool) -> _ConvModuleState:
    def leaf(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.detach().to(dtype).clone().requires_grad_(requires_grad)

    bn = block.bn
    return _ConvModuleState(
        weight=leaf(block.conv.weight),
        bias=leaf(block.conv.bias),
        bn_weight=None if bn is None else leaf(bn.weight),
        bn_bias=None if bn is None else leaf(bn.bias),
        running_mean=None if bn is None else bn.running_mean.detach().to(dtype).clone(),
        running_var=None if bn is None else bn.running_var.detach().to(dtype).clone(),
    )


def from_generator(
    gen: torch.nn.Module, *, dtype: torch.dtype = torch.float64, requires_grad: bool = False, hw_as_coded: bool = True
) -> Transcription:
    """A transcription holding copies of ``gen``'s (a ``MaskGenerator``) tensors in ``dtype``, in its training
    mode. With ``requires_grad`` the copied parameters are leaves, for autograd through the transcription."""
    return Transcription(
        conv_q=_conv_state(gen.conv_q, dtype, requires_grad),
        conv_k=_conv_state(gen.conv_k, dtype, requires_grad),
        v_weight=gen.conv_v.weight.detach().to(dtype).clone().requires_grad_(requires_grad),
        v_bias=gen.conv_v.bias.detach().to(dtype).clone().requires_grad_(requires_grad),
        inter_channels=gen.inter_channels,
        lam_concat=gen.lam_concat,
        use_scale=gen.use_scale,
        training=gen.training,
        dtype=dtype,
        hw_as_coded=hw_as_coded,
    )


def parameters(t: Transcription) -> dict[str, Tensor]:
    """The transcription's parameters under ``MaskGenerator``'s state-dict names."""
    out = {"conv_v.weight": t.v_weight, "conv_v.bias": t.v_bias}
    for name, m in (("conv_q", t.conv_q), ("conv_k", t.conv_k)):
        out[f"{name}.conv.weight"] = m.weight
        if m.bias is not None:
            out[f"{name}.conv.bias"] = m.bias
        if m.bn_weight is not None:
            out[f"{name}.bn.weight"] = m.bn_weight
            out[f"{name}.bn.bias"] = m.bn_bias
    return out


def explicit_mix(x: Tensor, index: Tensor, masks: Tensor) -> Tensor:
    """The published ``co_mixup`` mix: sum_i x[index[i]] * mask[:, i] (for two sources with index[0] the
    identity it is ``mixup``'s x * mask[:, 0] + x[index] * mask[:, 1])."""
    out = torch.zeros_like(x)
    for i in range(index.shape[0]):
        out = out + x[index[i]] * masks[:, i, :, :].unsqueeze(1)
    return out
