"""The mixers, one module per method on one base (``Mixer``, an ``nn.Module``):
``x_mix, y_soft = mixer(x, y, grad)``.

All mix through the same blend engine (``blend_regions``): a mixup is a map that blends everywhere, a
CutMix box is a map that takes the partner inside the box, and R-Mix's map comes from its thresholded
saliency (``rmix``, which fuses the saliency and threshold steps in front of the same blend). Labels mix
by the op's ``lam_eff``, the exact share of each sample's own pixels. What was drawn for the last batch is
in ``mixer.last_params``. Manifold Mixup mixes hidden activations with the same engine, inside the model's
forward: every mixer also has ``with mixer.mixing(x, y, grad, layers=...) as (x_in, y_soft)`` around the
forward, which a loop can use for every method alike. RL-Mix is R-Mix with a learned level per sample: its
agent is the mixer's state, and it reads the training backward's gradient (``mixer.after_backward()``).
AdAutoMix runs the step's forwards itself (``owns_step``: ``training_loss``, ``after_optimizer_step``): its
generator, one-hot head, EMA teacher and their optimiser are the mixer's state. AmortisedRMix is R-Mix whose
saliency is stored per sample from the training backward (``needs_indices``: the batch's dataset indices).
"""

from rmix_fast.mixers.adautomix import AdAutoMix, AdAutoMixLoss
from rmix_fast.mixers.amortised_rmix import AmortisedRMix
from rmix_fast.mixers.base import Mixer, MixParams, RegionMixer, soft_targets
from rmix_fast.mixers.cutmix import CutMix
from rmix_fast.mixers.manifold import ManifoldMixup
from rmix_fast.mixers.mixup import Mixup
from rmix_fast.mixers.rlmix import RLMix
from rmix_fast.mixers.rmix import RMix
from rmix_fast.mixers.sage import SAGE

__all__ = [
    "SAGE",
    "AdAutoMix",
    "AdAutoMixLoss",
    "AmortisedRMix",
    "CutMix",
    "ManifoldMixup",
    "MixParams",
    "Mixer",
    "Mixup",
    "RLMix",
    "RMix",
    "RegionMixer",
    "soft_targets",
]
