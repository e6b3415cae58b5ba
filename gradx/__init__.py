"""gradx: gradient transformations for JAX, a drop-in for Optax with PyTorch parity.

``import gradx as optax`` runs Optax code with the same numbers; see README.md for what gradx
adds. Every public name is re-exported here from the module that defines it.
"""

from gradx import checks, plumbing
from gradx.base import *  # noqa: F401,F403
from gradx.combine import chain, named_chain
from gradx.leafwise import Moment, leafwise
from gradx.masking import MaskedNode, MaskedState, masked
from gradx.plumbing import global_norm
from gradx.updates import apply_updates, incremental_update, periodic_update

from gradx.adam_family import *  # noqa: F401,F403
from gradx.rms_family import *  # noqa: F401,F403
from gradx.momentum import *  # noqa: F401,F403
from gradx.sign_based import *  # noqa: F401,F403
from gradx.factored import *  # noqa: F401,F403
from gradx.scaling import *  # noqa: F401,F403
from gradx.clipping import *  # noqa: F401,F403
from gradx.weight_decay import *  # noqa: F401,F403
from gradx.noise import *  # noqa: F401,F403
from gradx.constraints import *  # noqa: F401,F403
from gradx.accumulation import *  # noqa: F401,F403
from gradx.step_size import *  # noqa: F401,F403
from gradx.lbfgs import *  # noqa: F401,F403
from gradx.linesearch import *  # noqa: F401,F403
from gradx.schedules import *  # noqa: F401,F403
from gradx.optimizers import *  # noqa: F401,F403
from gradx.matrix import *  # noqa: F401,F403
from gradx.hyperparams import *  # noqa: F401,F403
from gradx.partition import *  # noqa: F401,F403
from gradx.multi_steps import *  # noqa: F401,F403
from gradx.wrappers import *  # noqa: F401,F403
from gradx.monitoring import *  # noqa: F401,F403
from gradx.groups import *  # noqa: F401,F403
from gradx.plateau import *  # noqa: F401,F403
from gradx.skipping import *  # noqa: F401,F403
from gradx.mixed_precision import *  # noqa: F401,F403
from gradx.memory import *  # noqa: F401,F403
from gradx.curvature import *  # noqa: F401,F403

__version__ = "0.1.0"

from gradx import checkpoint, contrib, fused, recipes, sharding, torch_compat  # noqa: E402  (built on the above)
from gradx import (assignment, experimental, losses, microbatching, perturbations,  # noqa: E402
                   projections, second_order, transforms, tree, tree_utils)  # Optax's modules
from gradx.microbatching import microbatch  # noqa: E402
from gradx.optimizers import optimistic_adam  # noqa: E402  (deprecated, so not in optimizers.__all__)
from gradx.least_squares import nnls  # noqa: E402
from gradx.numerics import safe_norm, safe_root_mean_squares, scale_gradient  # noqa: E402
from gradx.perturbations import multi_normal  # noqa: E402
from gradx.losses import (  # noqa: E402  (the losses Optax also exports at its top level)
    convex_kl_divergence, cosine_distance, cosine_similarity, ctc_loss, ctc_loss_with_forward_probs,
    generalized_kl_divergence, hinge_loss, huber_loss, kl_divergence, l2_loss, log_cosh, ntxent,
    safe_softmax_cross_entropy, sigmoid_binary_cross_entropy, sigmoid_focal_loss, smooth_labels,
    softmax_cross_entropy, softmax_cross_entropy_with_integer_labels, squared_error)
from gradx.tree_utils import tree_map_params  # noqa: E402
