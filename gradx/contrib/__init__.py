"""Optax's ``contrib`` optimizers with Optax 0.2.8's names, defaults, state and numbers (fixed
where the authors' reference shows a defect; see each docstring), plus MARS. ``muon`` comes from the matrix engine (``gradx.matrix``) and ``sophia`` from
``gradx.curvature``: one implementation each, under both paths.

One algorithm per module (state class, building block and alias together); the modules are
private (``_adopt``, as Optax's) so that ``gradx.contrib.adopt`` is the optimizer, not a module.
"""

from gradx.plateau import ReduceLROnPlateauState, reduce_on_plateau

from gradx.contrib._acprop import acprop, scale_by_acprop
from gradx.contrib._ademamix import ScaleByAdemamixState, ademamix, scale_by_ademamix
from gradx.contrib._ademamix import ScaleBySimplifiedAdEMAMixState, simplified_ademamix
from gradx.contrib._ademamix import scale_by_simplified_ademamix
from gradx.contrib._adopt import adopt, scale_by_adopt
from gradx.contrib._complex_valued import SplitRealAndImaginaryState, split_real_and_imaginary
from gradx.contrib._galore import GaLoreDimensionNumbers, GaLoreState, galore, scale_by_galore
from gradx.contrib._madgrad import MadgradState, madgrad, scale_by_madgrad
from gradx.contrib._mars import ScaleByMarsState, mars, scale_by_mars
from gradx.contrib._schedule_free import ScheduleFreeState, schedule_free
from gradx.contrib._schedule_free import schedule_free_adamw, schedule_free_sgd
from gradx.contrib._schedule_free import schedule_free_eval_params
from gradx.contrib._cocob import COCOBState, cocob, scale_by_cocob
from gradx.contrib._dadapt_adamw import DAdaptAdamWState, dadapt_adamw
from gradx.contrib._dog import DoGState, dog, scale_by_dog
from gradx.contrib._dowg import DoWGState, dowg, scale_by_dowg
from gradx.contrib._mechanic import MechanicState, mechanize
from gradx.contrib._momo import MomoAdamState, MomoState, momo, momo_adam
from gradx.contrib._privacy import (DifferentiallyPrivateAggregateState,
                                    differentially_private_aggregate, dpsgd)
from gradx.contrib._prodigy import ProdigyState, prodigy
from gradx.contrib._sam import NormalizeState, SAMState, normalize, sam
from gradx.curvature import (HutchinsonState, SophiaState, hutchinson_estimator_diag_hessian,
                             sophia)
from gradx.matrix import MuonDimensionNumbers, MuonState, muon, scale_by_muon

__all__ = [
    "ReduceLROnPlateauState", "reduce_on_plateau",
    "acprop", "scale_by_acprop",
    "ScaleByAdemamixState", "ScaleBySimplifiedAdEMAMixState", "ademamix", "scale_by_ademamix",
    "scale_by_simplified_ademamix", "simplified_ademamix",
    "adopt", "scale_by_adopt",
    "SplitRealAndImaginaryState", "split_real_and_imaginary",
    "GaLoreDimensionNumbers", "GaLoreState", "galore", "scale_by_galore",
    "MadgradState", "madgrad", "scale_by_madgrad",
    "ScaleByMarsState", "mars", "scale_by_mars",
    "ScheduleFreeState", "schedule_free", "schedule_free_adamw", "schedule_free_eval_params",
    "schedule_free_sgd",
    "COCOBState", "cocob", "scale_by_cocob",
    "DAdaptAdamWState", "dadapt_adamw",
    "DoGState", "dog", "scale_by_dog",
    "DoWGState", "dowg", "scale_by_dowg",
    "MechanicState", "mechanize",
    "MomoState", "MomoAdamState", "momo", "momo_adam",
    "DifferentiallyPrivateAggregateState", "differentially_private_aggregate", "dpsgd",
    "ProdigyState", "prodigy",
    "NormalizeState", "SAMState", "normalize", "sam",
    "HutchinsonState", "SophiaState", "hutchinson_estimator_diag_hessian", "sophia",
    "MuonDimensionNumbers", "MuonState", "muon", "scale_by_muon",
]
