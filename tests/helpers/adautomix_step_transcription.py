"""One ``AdAutoMix.forward_train`` step (JinXins/Adversarial-AutoMixup, ``openmixup/models/classifiers/
AdAutoMix.py``) transcribed as literally as plain torch allows, in float64, on copies of a mixer's networks.

Kept from the published code: the backbone pass of k for the features (stages up to the last, the head not
run); the mask generator called twice (``mix_block(mb, lam)`` with gradient, ``mix_block(bb, lam)``
detached), through the literal ``AdaptiveMask`` transcription (``adautomix_transcription.py``) with
``F.interpolate`` and the softmax over sources; the ``lam_margin`` tests as written for each path; the mixes
as sums of ``x[index] * mask``; ``forward_k`` (k on the generator's mix, the mixup / co-mixup CE weighted
by λ, then k once per source for the cosine, ``torch.nn.CosineSimilarity(dim=-1)``); ``forward_q`` (q's
one-hot head on x, the linear co-mix for N > 2 summed source by source, q on the classifier's mix); the loss
summary with ``weight_*`` = 1 and the ``self.iter % 2 == 0`` adversarial branch; ``momentum_update``'s
parameter loop.

Changed: the networks are the project's (a ``forward_features`` backbone whose ``classifier`` is the mixed
head, the one-hot head a separate linear layer); ``ClsHead``/``ClsMixupHead`` losses are written as the
cross-entropies they compute; the draws are given (an ``AdAutoMixDraw``), not made with numpy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tests.helpers.adautomix_transcription import Transcription


def backbone_features(k: nn.Module, x: Tensor, layer: str) -> Tensor:
    """``backbone_k(img)[0]``: the backbone runs every stage (its ``out_indices`` ask for stages 3 and 4);
    the output of ``layer`` is the generator's input."""
    captured = []
    handle = k.get_submodule(layer).register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        k.forward_features(x)
    finally:
        handle.remove()
    return captured[0]


def head(model: nn.Module, x: Tensor) -> Tensor:
    """``head_mix([backbone(x)[-1]])``: the mixed head on the pooled last stage."""
    return model(x)


def published_step(
    *,
    k: nn.Module,
    q: nn.Module,
    head_one: tuple[Tensor, Tensor],
    mix_block: Transcription,
    layer: str,
    x: Tensor,
    gt_label: Tensor,
    draw,
    scale: int,
    mode: str,
    lam_margin: float,
    mixup_radio: float,
    beta_radio: float,
    iteration: int,
) -> dict[str, Tensor]:
    img = x
    feature = backbone_features(k, img, layer)
    n = draw.n_sources
    if n > 2:
        index_mb = [draw.index_mb[i] for i in range(n)]
        index_bb = [draw.index_bb[i] for i in range(n)]
        co_lam = list(draw.lam_mb_host)
        # co_mixup
        b, c, w, h = x.size()
        mb = [feature[index_mb[i], :] for i in range(len(index_mb))]
        bb = [feature[index_bb[i], :] for i in range(len(index_mb))]
        mask_mb = mix_block.forward(mb, co_lam, scale, mode)
        mask_bb = mix_block.forward(bb, co_lam, scale, mode).clone().detach()
        lam = co_lam
        if lam_margin >= lam[0] or lam_margin > 1 - lam[0]:
            mask_bb[:, 0, :, :] = lam[0]
            mask_bb[:, 1, :, :] = lam[1]
            mask_bb[:, 2, :, :] = lam[2]
        img_mix_mb = torch.zeros([b, c, w, h]).to(x)
        img_mix_bb = torch.zeros([b, c, w, h]).to(x)
        for i in range(0, n):
            img_mix_mb += x[index_mb[i], :] * mask_mb[:, i, :, :].unsqueeze(1)
            img_mix_bb += x[index_bb[i], :] * mask_bb[:, i, :, :].unsqueeze(1)
        # forward_k(img, img_mix_mb, gt_label, index_mb, co_lam)
        pred_mix_k = head(k, img_mix_mb)
        loss_mix_k = sum(co_lam[i] * F.cross_entropy(pred_mix_k, gt_label[index_mb[i]]) for i in range(n))
        simi = torch.nn.CosineSimilarity(dim=-1)
        pred = [head(k, x[index_mb[i], :]) for i in range(n)]
        cos_simi_weight = 0.0
        for i in range(n):
            cos_simi_weight += simi(pred_mix_k, pred[i]) * co_lam[i]
        cos_simi_weight = torch.mean(cos_simi_weight)
        # forward_q(img, img_mix_bb, gt_label, index_bb, co_lam)
        loss_one_q = F.cross_entropy(F.linear(q.forward_features(x).mean(dim=(2, 3)), *head_one), gt_label)
        co_mixed_x = x[index_bb[0],] * co_lam[0]
        for i in range(1, len(co_lam)):
            co_mixed_x += x[index_bb[i],] * co_lam[i]
        pred_co = head(q, co_mixed_x)
        loss_co_mix_q = sum(co_lam[i] * F.cross_entropy(pred_co, gt_label[index_bb[i]]) for i in range(n))
        loss_re_q = loss_one_q * (1 - mixup_radio) + loss_co_mix_q * mixup_radio
        pred_mix_q = head(q, img_mix_bb)
        loss_mix_q = sum(co_lam[i] * F.cross_entropy(pred_mix_q, gt_label[index_bb[i]]) for i in range(n))
        parts = {"lin_q": loss_co_mix_q}
    else:
        lam = list(draw.raw)  # lam[0]: mb, lam[1]: bb
        index = [draw.index_mb[1], draw.index_bb[1]]
        # mixup
        lam_mb, lam_bb = lam[0], lam[1]
        mb = [feature, feature[index[0], :]]
        bb = [feature, feature[index[1], :]]
        mask_mb = mix_block.forward(mb, lam_mb, scale, mode)
        mask_bb = mix_block.forward(bb, lam_bb, scale, mode).clone().detach()
        if lam_margin >= lam_bb or lam_margin >= 1 - lam_bb:
            mask_bb[:, 0, :, :] = lam_bb
            mask_bb[:, 1, :, :] = 1 - lam_bb
        img_mix_mb = x * mask_mb[:, 0, :, :].unsqueeze(1) + x[index[0], :] * mask_mb[:, 1, :, :].unsqueeze(1)
        img_mix_bb = x * mask_bb[:, 0, :, :].unsqueeze(1) + x[index[1], :] * mask_bb[:, 1, :, :].unsqueeze(1)
        # forward_k(img, img_mix_mb, gt_label, index[0], lam[0])
        pred_mix_k = head(k, img_mix_mb)
        loss_mix_k = lam_mb * F.cross_entropy(pred_mix_k, gt_label) + (1 - lam_mb) * F.cross_entropy(
            pred_mix_k, gt_label[index[0]]
        )
        simi = torch.nn.CosineSimilarity(dim=-1)
        x_ = x[index[0], :]
        pred_x = head(k, x)
        pred_x_ = head(k, x_)
        cos_simi_weight = torch.mean(simi(pred_mix_k, pred_x) * lam_mb + simi(pred_mix_k, pred_x_) * (1 - lam_mb))
        # forward_q(img, img_mix_bb, gt_label, index[1], lam[1]): the two-source path has no linear mix
        loss_one_q = F.cross_entropy(F.linear(q.forward_features(x).mean(dim=(2, 3)), *head_one), gt_label)
        loss_re_q = loss_one_q
        pred_mix_q = head(q, img_mix_bb)
        loss_mix_q = lam_bb * F.cross_entropy(pred_mix_q, gt_label) + (1 - lam_bb) * F.cross_entropy(
            pred_mix_q, gt_label[index[1]]
        )
        parts = {}
    loss = loss_mix_q + loss_re_q
    if iteration % 2 == 0:
        loss_k = (-1.0) * beta_radio * loss_mix_k + (1 - beta_radio) * cos_simi_weight
    else:
        loss_k = loss_mix_k
    loss = loss + loss_k
    return {
        "loss": loss,
        "mix_q": loss_mix_q,
        "one_q": loss_one_q,
        "mix_k": loss_mix_k,
        "cosine": cos_simi_weight,
        "x_mb": img_mix_mb,
        "x_bb": img_mix_bb,
        **parts,
    }


@torch.no_grad()
def momentum_update(k: nn.Module, q: nn.Module, momentum: float) -> None:
    """``momentum_update``: k = k * m + q * (1 - m) over the backbone's and the heads' parameters, one by one
    (the project's model holds the backbone and the mixed head, so its parameters are all of them)."""
    if momentum >= 1.0:
        return
    for param_q, param_k in zip(q.parameters(), k.parameters(), strict=True):
        param_k.data = param_k.data * momentum + param_q.data * (1.0 - momentum)
