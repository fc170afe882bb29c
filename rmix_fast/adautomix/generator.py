"""AdAutoMix's mask generator (``AdaptiveMask`` in the published ``openmixup/models/heads/Ada_mix_pine.py``)
as a device-agnostic module that returns the low-resolution logits ``blend_sources`` upsamples, normalises
and mixes in one op. What it computes and how it departs from the published code: ``rmix_fast.adautomix``."""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Real

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rmix_fast.ops._checks import check_float_tensor, check_positive_int, describe, is_integer_tensor
from rmix_fast.reference.blend_sources import MODES, blend_sources_weights

__all__ = ["INIT_MODES", "NORMS", "ConvNormReLU", "MaskGenerator"]

NORMS = (None, "bn")
INIT_MODES = ("normal", "kaiming")

# The published code clamps an attention map to +-1e25 when it holds an inf (Ada_mix_pine.py: caculate_attention,
# co_caculate_attention).
_ATTN_CLAMP = 1e25


class ConvNormReLU(nn.Module):
    """mmcv's ``ConvModule`` as ``AdaptiveMask`` builds it: a 1x1 conv (bias only without a norm: mmcv's
    ``bias='auto'``), an optional BatchNorm2d (mmcv's ``dict(type='BN')``: eps 1e-5, momentum 0.1), then ReLU.
    The submodules are named as mmcv names them (``conv``, ``bn``) so that a published checkpoint's
    ``mix_block.*`` entries load as they are."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        norm: str | None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=norm is None, device=device, dtype=dtype)
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-5, momentum=0.1, device=device, dtype=dtype) if norm else None

    def forward(self, x: Tensor) -> Tensor:
        # MaskGenerator runs the conv itself (fused with the others); this is for using the block on its own.
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x)


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {describe(value)}")
    return value


def _exclusive_sum(k: Tensor) -> Tensor:
    """(N, ...) -> (N, ...): entry i is the sum of all entries j != i over dim 0.

    Prefix plus suffix sums, not ``k.sum(0) - k[i]``: the keys are >= 0 (after ReLU), so these sums of
    non-negative terms are exact up to rounding, whereas the subtraction cancels catastrophically when one
    source's keys dominate the others' (its row would lose the other sources to within eps * |k_i|)."""
    N = k.shape[0]
    if N == 1:  # no other source: an empty sum
        return torch.zeros_like(k)
    if N == 2:
        return k.flip(0)
    zero = torch.zeros_like(k[:1])
    before = torch.cat([zero, k[:-1].cumsum(0)])  # sum_{j < i}
    after = torch.cat([k[1:].flip(0).cumsum(0).flip(0), zero])  # sum_{j > i}
    return before + after


class MaskGenerator(nn.Module):
    """AdAutoMix's mask generator: per source i, attention of source i's queries against the sum of the other
    sources' keys, applied to source i's one-channel values. Returns the (B, N, h, w) logits; the masks are
    ``softmax_N(upsample(logits))``, which ``rmix_fast.blend_sources(x, index=index, logits=logits,
    scale=scale)`` computes fused with the mix (or ``masks`` on its own, for inspection).

    For source i (features f_i = features[index[i]], with lam[i] appended as a constant channel if
    ``lam_concat``), P = h * w pixels and d = max(in_channels // reduction, 1):

        q_i = ReLU(norm(conv_q(f_i))), k_i = ReLU(norm(conv_k(f_i)))      (B, d, P)
        v_i = conv_v(f_i)                                                   (B, 1, P)
        A_i = softmax_keys(q_i^T (sum_{j != i} k_j) / sqrt(d))              (B, P, P)   (/ sqrt(d) if use_scale)
        logits[:, i] = A_i v_i^T                                            (B, h, w)

    Args:
        in_channels: C, the feature channels (the config's ``in_channel``: 256 for ResNet-18 stage 3, 1024
            for ResNet-50 / ResNeXt-50).
        reduction: d = max(C // reduction, 1) query/key channels (2 in every published config).
        lam_concat: append each source's lam as a constant input channel (False in the CIFAR-100 and
            Tiny-ImageNet configs, True in the ImageNet, CUB, Cars and Aircraft ones). With it, ``forward``
            needs ``lam``; the published two-source path appends lam and 1 - lam, so pass (lam, 1 - lam).
        use_scale: divide the attention logits by sqrt(d) (True in every published config).
        norm: None (no norm, the convs have a bias) or "bn" (BatchNorm2d after the query and key convs, no
            conv bias: the ImageNet ResNet-50 config's ``att_norm_cfg=dict(type='BN')``).
        init: "normal" (N(0, std) weights, zero biases: what AdAutoMix's ``init_weights`` asks for) or
            "kaiming" (He normal, fan_in, ReLU gain; zero biases). BatchNorm: weight 1, bias 0.
        std: the standard deviation of "normal" (0.01 as published).
        generator: the ``torch.Generator`` the initial weights are drawn from (the global RNG if None).
        device, dtype: of the parameters. The module computes in its parameters' dtype (the attention in at
            least float32) and casts the features to it.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        reduction: int = 2,
        lam_concat: bool = False,
        use_scale: bool = True,
        norm: str | None = None,
        init: str = "normal",
        std: float = 0.01,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.reduction = check_positive_int("reduction", reduction)
        self.lam_concat = _check_bool("lam_concat", lam_concat)
        self.use_scale = _check_bool("use_scale", use_scale)
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        self.norm = norm
        self.inter_channels = max(self.in_channels // self.reduction, 1)
        qk_in = self.in_channels + int(self.lam_concat)
        # Attribute names as in the published module, so its state dict maps one to one.
        self.conv_q = ConvNormReLU(qk_in, self.inter_channels, norm, device=device, dtype=dtype)
        self.conv_k = ConvNormReLU(qk_in, self.inter_channels, norm, device=device, dtype=dtype)
        self.conv_v = nn.Conv2d(qk_in, 1, 1, bias=True, device=device, dtype=dtype)
        self.reset_parameters(init=init, std=std, generator=generator)

    @torch.no_grad()
    def reset_parameters(
        self, *, init: str = "normal", std: float = 0.01, generator: torch.Generator | None = None
    ) -> None:
        """The published ``init_weights``: every conv N(0, std) (or He normal) with zero bias, every BatchNorm
        weight 1 and bias 0, drawn in module order (conv_q, conv_k, conv_v). It overwrites mmcv's own
        ``ConvModule`` init (Kaiming), as the published module does. Running statistics are not touched."""
        if init not in INIT_MODES:
            raise ValueError(f"init must be one of {INIT_MODES}, got {init!r}")
        if isinstance(std, bool) or not isinstance(std, Real) or not float(std) > 0:
            raise ValueError(f"std must be a positive number, got {std!r}")
        for conv in (self.conv_q.conv, self.conv_k.conv, self.conv_v):
            if init == "normal":
                nn.init.normal_(conv.weight, 0.0, float(std), generator=generator)
            else:
                nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu", generator=generator)
            if conv.bias is not None:
                conv.bias.zero_()
        for block in (self.conv_q, self.conv_k):
            if block.bn is not None:
                block.bn.weight.fill_(1.0)
                block.bn.bias.zero_()

    def _check_inputs(self, features: object, index: object, lam: object) -> tuple[Tensor, Tensor, Tensor | None]:
        features = check_float_tensor("features", features)
        if features.dim() != 4:
            raise ValueError(f"features must be 4-D (B, C, h, w), got shape {tuple(features.shape)}")
        B, C = features.shape[:2]
        if C != self.in_channels:
            raise ValueError(
                f"features must have in_channels={self.in_channels} channels, got shape {tuple(features.shape)}"
            )
        if not isinstance(index, Tensor) or not is_integer_tensor(index):
            raise TypeError(f"index must be an integer torch.Tensor, got {describe(index)}")
        if index.dim() != 2 or index.shape[0] < 1 or index.shape[1] != B:
            raise ValueError(
                f"index must have shape (N, {B}) with N >= 1 sources, one row per source over the features' batch "
                f"of {B}, got shape {tuple(index.shape)}"
            )
        if index.device != features.device:
            raise ValueError(f"index is on {index.device} but features are on {features.device}")
        N = index.shape[0]
        if lam is None:
            if self.lam_concat:
                raise ValueError(f"lam is required with lam_concat=True: one value per source, shape ({N},)")
            return features, index, None
        if isinstance(lam, Tensor):
            if not lam.is_floating_point() or lam.dim() != 1 or lam.shape[0] != N:
                raise ValueError(f"lam must be a float tensor of shape ({N},), one per source, got {describe(lam)}")
        elif isinstance(lam, Sequence) and all(isinstance(v, Real) and not isinstance(v, bool) for v in lam):
            if len(lam) != N:
                raise ValueError(
                    f"lam must hold one value per source ({N} for index of shape {tuple(index.shape)}), got {len(lam)}"
                )
        else:
            raise ValueError(
                f"lam must be a sequence of {N} floats or a float tensor of shape ({N},), got {describe(lam)}"
            )
        # Python floats as float64 (exact); cast to the parameters' dtype where used
        lam_t = lam if isinstance(lam, Tensor) else torch.tensor(lam, dtype=torch.float64)
        return features, index, lam_t.to(features.device)

    def forward(self, features: Tensor, index: Tensor, lam: Sequence[float] | Tensor | None = None) -> Tensor:
        """(B, C, h, w) features and (N, B) source indices -> (B, N, h, w) logits.

        Args:
            features: the EMA teacher's stage-3 features of the batch (not yet gathered per source).
            index: (N, B) integer tensor: source i of sample b is ``features[index[i, b]]`` (and ``x[index[i, b]]``
                in ``blend_sources``). The rows need not be permutations here; indices are not range-checked
                (that would cost a host sync): torch's gather raises on a bad one.
            lam: (N,) the per-source lam (a sequence of floats or a tensor), required with ``lam_concat`` and
                otherwise ignored (checked if given).
        """
        features, index, lam_t = self._check_inputs(features, index, lam)
        B, C, h, w = features.shape
        N, d, P = index.shape[0], self.inter_channels, h * w
        param_dtype = self.conv_v.weight.dtype
        # The published code forces float32 for the matmuls and softmax (``.type(torch.float32)``); float64
        # stays float64 here so the module can be checked against a float64 transcription.
        ct = torch.promote_types(param_dtype, torch.float32)

        # The three 1x1 convs as one: stack their weights, (2d + 1, C [+ 1]). A 1x1 conv acts per sample, so
        # conv(features[index[i]]) == conv(features)[index[i]]: convolve the B maps once and gather the (2d + 1)
        # channel outputs, rather than gathering N copies of the C-channel features.
        weight = torch.cat([self.conv_q.conv.weight, self.conv_k.conv.weight, self.conv_v.weight]).flatten(1)
        zeros = weight.new_zeros(d)
        bias = torch.cat(
            [
                self.conv_q.conv.bias if self.conv_q.conv.bias is not None else zeros,
                self.conv_k.conv.bias if self.conv_k.conv.bias is not None else zeros,
                self.conv_v.bias,
            ]
        )
        y = F.conv2d(features.to(param_dtype), weight[:, :C, None, None])  # (B, 2d + 1, h, w)
        # One gather per source: each row of index is a permutation, so each gather's backward writes every
        # sample once (an index_add without repeats), and autograd sums the N of them in a fixed order. A single
        # gather of all N rows would repeat every sample N times in one accumulating scatter, whose order (and
        # so its rounding) varies between runs on CPU threads and GPU atomics.
        rows = index.long()
        y = torch.stack([y.index_select(0, rows[i]) for i in range(N)])  # (N, B, 2d + 1, h, w)
        per_source = bias.expand(N, -1)
        if self.lam_concat:
            # The lam channel is the last input channel and constant over the map: it adds lam_i * W[:, C].
            per_source = per_source + lam_t.to(weight.dtype)[:, None] * weight[:, C]
        y = y + per_source[:, None, :, None, None]

        q, k = self._norm_relu(self.conv_q, y[:, :, :d]), self._norm_relu(self.conv_k, y[:, :, d : 2 * d])
        q = q.reshape(N, B, d, P).transpose(-1, -2).to(ct)  # (N, B, P, d)
        k_others = _exclusive_sum(k.reshape(N, B, d, P).to(ct))  # (N, B, d, P)
        v = y[:, :, 2 * d].reshape(N, B, P, 1).to(ct)

        # Sum over j != i of q_i k_j == q_i (sum_{j != i} k_j): one matmul per source, not N - 1.
        attn = torch.matmul(q, k_others).to(ct)  # (N, B, P, P); .to: autocast may have run it in half
        # The published code clamps a source's whole attention map when any entry is inf (a data-dependent
        # `if`); the same without a host sync: select the clamped map under a device-side flag.
        has_inf = torch.isinf(attn).flatten(1).any(dim=1)[:, None, None, None]
        attn = torch.where(has_inf, attn.clamp(min=-_ATTN_CLAMP, max=_ATTN_CLAMP), attn)
        if self.use_scale:
            attn = attn / d**0.5
        attn = attn.softmax(dim=-1)
        m = torch.matmul(attn, v).to(ct)  # (N, B, P, 1)
        return m.reshape(N, B, h, w).transpose(0, 1).contiguous()  # blend_sources' kernels read it densely

    @staticmethod
    def _norm_relu(block: ConvNormReLU, y: Tensor) -> Tensor:
        """(N, B, d, h, w) conv outputs -> norm (if any) and ReLU. The published code calls each ConvModule once
        per source, so in training mode BatchNorm takes its statistics per source and updates its running
        statistics once per source, in source order: so does this loop (in eval mode it costs N small calls)."""
        if block.bn is not None:
            y = torch.stack([block.bn(y[i]) for i in range(y.shape[0])])
        return F.relu(y)

    @staticmethod
    def masks(logits: Tensor, scale: int, mode: str = "bilinear") -> Tensor:
        """(B, N, h, w) logits -> the (B, N, h * scale, w * scale) masks, softmax over N of the upsampled
        logits: what ``blend_sources`` mixes with, materialised for inspection (the reference's weights)."""
        logits = check_float_tensor("logits", logits)
        if logits.dim() != 4:
            raise ValueError(f"logits must be 4-D (B, N, h, w), got shape {tuple(logits.shape)}")
        s = check_positive_int("scale", scale)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        return blend_sources_weights(logits, s, mode, "softmax")

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, inter_channels={self.inter_channels}, lam_concat={self.lam_concat}, "
            f"use_scale={self.use_scale}, norm={self.norm!r}"
        )
