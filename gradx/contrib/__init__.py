"""``optax.contrib``: contributed optimizers and wrappers, one algorithm per module, with Optax
0.2.8's names, signatures, defaults, state classes and numbers (see each module for where gradx
differs, and ``docs/api/contrib.md``)."""

from gradx.contrib.cocob import COCOBState, cocob, scale_by_cocob
from gradx.contrib.dadapt_adamw import DAdaptAdamWState, dadapt_adamw
from gradx.contrib.dog import DoGState, dog, scale_by_dog
from gradx.contrib.dowg import DoWGState, dowg, scale_by_dowg
from gradx.contrib.mechanic import MechanicState, mechanize
from gradx.contrib.momo import MomoAdamState, MomoState, momo, momo_adam
from gradx.contrib.privacy import (DifferentiallyPrivateAggregateState,
                                     differentially_private_aggregate, dpsgd)
from gradx.contrib.prodigy import ProdigyState, prodigy
from gradx.contrib.sam import NormalizeState, SAMState, normalize, sam
from gradx.plateau import ReduceLROnPlateauState, reduce_on_plateau

__all__ = [
    "COCOBState", "cocob", "scale_by_cocob",
    "DAdaptAdamWState", "dadapt_adamw",
    "DoGState", "dog", "scale_by_dog",
    "DoWGState", "dowg", "scale_by_dowg",
    "MechanicState", "mechanize",
    "MomoState", "MomoAdamState", "momo", "momo_adam",
    "DifferentiallyPrivateAggregateState", "differentially_private_aggregate", "dpsgd",
    "ProdigyState", "prodigy",
    "NormalizeState", "SAMState", "normalize", "sam",
    "ReduceLROnPlateauState", "reduce_on_plateau",
]
