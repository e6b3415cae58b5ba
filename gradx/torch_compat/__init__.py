"""``gradx.torch_compat``: PyTorch's optimizers, schedulers, clipping and checkpoints in JAX,
number for number (torch 2.13).

Every optimizer takes ``torch.optim``'s argument names and defaults and returns a gradx
transformation whose updates are torch's whole parameter change per ``optimizer.step()``. See
the README section "Porting from PyTorch" for the mapping and where these differ from the Optax-compatible
optimizers of the same name.
"""

from gradx.torch_compat import clipping, optimizers, param_groups as _param_groups_module
from gradx.torch_compat import plateau, schedulers, state_dict
from gradx.torch_compat.clipping import *  # noqa: F401,F403
from gradx.torch_compat.optimizers import *  # noqa: F401,F403
from gradx.torch_compat.param_groups import *  # noqa: F401,F403
from gradx.torch_compat.plateau import *  # noqa: F401,F403
from gradx.torch_compat.schedulers import *  # noqa: F401,F403
from gradx.torch_compat.state_dict import *  # noqa: F401,F403

__all__ = (clipping.__all__ + optimizers.__all__ + _param_groups_module.__all__ + plateau.__all__
           + schedulers.__all__ + state_dict.__all__)
