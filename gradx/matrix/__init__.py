"""The matrix-preconditioner engine and the optimizers built on it: Shampoo (Google's and
Meta's), SOAP, Muon and PSGD-Kron.

Engine layers: ``blocks`` (a leaf as stacks of same-shape blocks, and back, exactly),
``stacking`` (one batched call per block shape across the whole model), ``functions`` (inverse
roots, power iteration, Newton-Schulz, eigenbases), ``kronecker`` (factor statistics, mode
products, the amortised refresh that keeps failed roots and counts them), ``grafting`` (the
diagonal step whose norm a matrix step takes, also the fallback for leaves without factors).
Then one module per optimizer. See the engine section of ``docs/ARCHITECTURE.md``.
"""

from gradx.matrix.blocks import LeafBlocks, merge_dims, plan_blocks
from gradx.matrix.functions import (coupled_newton_inverse_root, eigh_inverse_root,
                                    matrix_inverse_pth_root, newton_schulz, power_iteration)
from gradx.matrix.grafting import Graft, GraftingType
from gradx.matrix.kronecker import FactorPlan, plan_leaf
from gradx.matrix.muon import (MuonDimensionNumbers, MuonState, WeightDimNumOrFn, muon,
                               orthogonalize_via_newton_schulz, scale_by_muon, scale_by_shape)
from gradx.matrix.psgd_kron import (PSGDKronState, precond_update_prob_schedule, psgd_kron,
                                    scale_by_psgd_kron)
from gradx.matrix.shampoo import ShampooState, distributed_shampoo, shampoo
from gradx.matrix.soap import SOAPState, soap
from gradx.matrix.stacking import map_stacked, shard_blocks

# The names re-exported at gradx's top level.
__all__ = ["matrix_inverse_pth_root", "power_iteration", "GraftingType", "ShampooState",
           "distributed_shampoo", "shampoo", "SOAPState", "soap", "MuonDimensionNumbers",
           "MuonState", "muon", "scale_by_muon", "PSGDKronState", "psgd_kron",
           "scale_by_psgd_kron", "precond_update_prob_schedule", "shard_blocks"]
