"""AdAutoMix (Qin et al., ICLR 2024; JinXins/Adversarial-AutoMixup): the pieces of its mixer. ``generator``:
the mask generator (below); ``ema``: the EMA teacher and its momentum schedule; ``draws``: each iteration's
mixing ratios and sources. Each module's docstring says what it takes from the published code.

What it computes
----------------
``MaskGenerator`` is the published ``AdaptiveMask`` (``openmixup/models/heads/Ada_mix_pine.py``), the
"mix block" that AdAutoMix runs on the EMA teacher's stage-3 features ``f`` (256 x 8 x 8 for the CIFAR
ResNet-18, 1024 x 14 x 14 for ImageNet ResNet-50). For N sources, source i being ``f[index[i]]`` (with its
lam appended as a constant channel when ``lam_concat``), P = h * w and d = max(C // reduction, 1)::

    q_i = ReLU(norm(conv_q(f_i)))   k_i = ReLU(norm(conv_k(f_i)))   (1x1 convs to d channels)
    v_i = conv_v(f_i)                                               (1x1 conv to 1 channel)
    A_i = softmax over keys of  q_i^T (sum_{j != i} k_j) / sqrt(d)  (B, P, P)
    logits[:, i] = A_i v_i                                          (B, h, w)

and returns the (B, N, h, w) logits. The masks are ``softmax_N(upsample(logits))`` (bilinear,
``align_corners=False``, x4 on CIFAR, x16 on ImageNet), and the mixed batch is ``sum_i masks[:, i] *
x[index[i]]``: exactly ``rmix_fast.blend_sources(x, index=index, logits=logits, scale=scale)``, which never
materialises the masks. ``MaskGenerator.masks`` gives them for inspection.

``conv_v``'s bias shifts all N maps alike, which the softmax over sources cancels: it gets no gradient (up to
rounding; in the published module too) and stays at its initial 0.

The published settings: ``in_channels`` 256 (ResNet-18) or 1024 (ResNet-50 / ResNeXt-50), ``reduction`` 2,
``use_scale`` True everywhere; ``lam_concat`` False on CIFAR-100 and Tiny-ImageNet, True on ImageNet, CUB,
Cars and Aircraft; ``norm="bn"`` only in the ImageNet ResNet-50 config (``att_norm_cfg=dict(type='BN')``;
the ImageNet ResNet-18 one has none). Initialisation: the conv weights N(0, 0.01) with zero biases (the
classifier calls ``init_weights(init_linear='normal')``, which overwrites mmcv's Kaiming init of its
``ConvModule``), BatchNorm weight 1 and bias 0. The state dict has the published names (``conv_q.conv.weight``,
``conv_q.bn.*``, ``conv_k.*``, ``conv_v.*``), so a published ``mix_block.*`` checkpoint loads into it.

Divergences from the published code, and why
---------------------------------------------
All of these leave the result equal to the published computation up to rounding, except where marked.

1. **Device-agnostic.** ``co_caculate_attention`` allocates its accumulator with ``torch.zeros(b, p,
   p).cuda()``; nothing here names a device.
2. **One attention matmul per source, not N - 1.** The code sums the N(N - 1) products q_i k_j over j != i;
   here q_i multiplies the summed keys once. Those sums are exclusive prefix + suffix sums, *not*
   ``K_sum - k_i``: the keys are >= 0 (after ReLU), so sums of them have no cancellation, whereas
   ``K_sum - k_i`` loses the other sources when k_i dominates (float32, keys 1e5 apart: 2.9e-4 of the map's
   scale, against 2e-7 here; tests/adautomix).
3. **The convolutions run once on the B feature maps, then the outputs are gathered per source.** A 1x1
   conv acts per sample, so conv(f[index[i]]) = conv(f)[index[i]]; and the lam channel, constant over the
   map, adds lam_i * W[:, C], applied as a per-source bias. Same numbers, (2d + 1) gathered channels
   instead of N copies of C, and one conv instead of 3N.
4. **One formula for every N.** The code has a two-source path (``normal_mix``: q_0 against k_1, q_1 against
   k_0, the lam channels lam and **1 - lam**) and an N > 2 path (``co_mix``: lam_i per source). Both are the
   formula above; pass ``lam=(lam, 1 - lam)`` for the two-source behaviour. N = 1, where the code has no
   branch (its ``mask`` is unbound), gives uniform attention (an empty key sum), so masks of 1.
5. **Any h x w.** The code reads ``b, c, w, h = f.size()`` and builds its lam channel as (b, 1, h, w) and
   its map as ``.view(b, 1, h, w)``, with h and w swapped: only square maps run there (all the published
   ones are). Here the true (h, w); equal for square maps.
6. **The NaN replacement is not replicated** (marked: different where it would fire). The code replaces NaNs
   of the map by 1e-4 (source 0) and 1e4 (source 1) for two sources, or 0.3 for more, after recomputing it
   in float64 (and prints "nan"). On the path that runs it cannot fire: q, k >= 0 so their products never
   meet as inf - inf; the inf clamp (below) keeps the softmax finite; each row of A sums to 1, so |A v| <=
   max |v|. It fires only when something upstream is already non-finite: the features or weights, or a 1x1
   conv output beyond the dtype's range (an inf key times a zero query is NaN): a run that has diverged,
   which NaNs then show rather than hide.
7. **The inf clamp is replicated without a host sync.** The code clamps a source's whole attention map to
   +-1e25 (before the 1 / sqrt(d) and the softmax) when any entry is inf, under a Python ``if
   torch.any(...)``; here ``torch.where`` on a device flag selects the clamped map, the same values. The
   code's ``overflow`` counter is not kept.
8. **Precision.** The code casts to float32 around the matmuls and the softmax; here they run in the
   parameters' dtype promoted to at least float32 (float32 by default, float64 for a ``.double()`` module).
   Under autocast the matmuls run in half precision in both (autocast overrides the casts), and the map is
   cast back before the clamp, as the code does.
9. **BatchNorm in training mode** takes its statistics per source and updates its running statistics once
   per source, q and k modules separately, in source order, exactly as the code's one ``ConvModule`` call per
   source does (the norm is applied per source; only the conv is batched).
10. **Not ported:** the upsampling and the softmax over sources (``blend_sources`` does them: its "nearest"
    is pixel replication, equal to the code's ``F.interpolate(scale_factor=s)`` at power-of-two scales, as
    all the published ones are); ``unsampling_mode='None'`` (a random mode per call) and "bicubic"; the
    ``debug_plot`` results; ``frozen`` (use ``requires_grad_(False)``); ``lam_mul``, ``lam_mul_k`` and
    ``lam_residual``, constructor arguments the forward never reads.
"""

from rmix_fast.adautomix.draws import AdAutoMixDraw, lam_fallback, sample_adautomix
from rmix_fast.adautomix.ema import EmaTeacher, ema_momentum, ema_update_, frozen_copy
from rmix_fast.adautomix.generator import MaskGenerator

__all__ = [
    "AdAutoMixDraw",
    "EmaTeacher",
    "MaskGenerator",
    "ema_momentum",
    "ema_update_",
    "frozen_copy",
    "lam_fallback",
    "sample_adautomix",
]
