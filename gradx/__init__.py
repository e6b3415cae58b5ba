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

__version__ = "0.1.0"

from gradx import checkpoint, contrib, fused, recipes, sharding, torch_compat  # noqa: E402  (built on the above)
