"""Losses: Optax's ``optax.losses``, all 32, with the same names, arguments, values and
gradients (the defects fixed are listed in each module's docstring and in the README).

They are plain functions of predictions and targets, outside the optimizer layers: nothing here
imports a transformation. ``gradx`` re-exports the 19 losses Optax re-exports at its top level
(``gradx.softmax_cross_entropy is gradx.losses.softmax_cross_entropy``).
"""

from gradx.losses.classification import *  # noqa: F401,F403
from gradx.losses.classification import __all__ as _classification
from gradx.losses.ctc import *  # noqa: F401,F403
from gradx.losses.ctc import __all__ as _ctc
from gradx.losses.ranking import *  # noqa: F401,F403
from gradx.losses.ranking import __all__ as _ranking
from gradx.losses.regression import *  # noqa: F401,F403
from gradx.losses.regression import __all__ as _regression
from gradx.losses.segmentation import *  # noqa: F401,F403
from gradx.losses.segmentation import __all__ as _segmentation
from gradx.losses.self_supervised import *  # noqa: F401,F403
from gradx.losses.self_supervised import __all__ as _self_supervised

__all__ = [*_classification, *_ctc, *_ranking, *_regression, *_segmentation, *_self_supervised]

