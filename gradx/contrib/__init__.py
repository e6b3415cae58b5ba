"""Optax's ``contrib`` optimizers with Optax 0.2.8's names, defaults, state and numbers (fixed
where the authors' reference shows a defect; see each docstring), plus MARS.

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
]
