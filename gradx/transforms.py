"""Optax's ``optax.transforms`` module: the building blocks and wrappers it groups, each the same
object as at gradx's top level (``gradx.transforms.chain is gradx.chain``)."""

from gradx.base import NonNegativeParamsState
from gradx.clipping import (adaptive_grad_clip, clip, clip_by_block_rms, clip_by_global_norm,
                            per_example_global_norm_clip, per_example_layer_norm_clip,
                            unitwise_clip, unitwise_norm)
from gradx.combine import chain, named_chain
from gradx.constraints import ZeroNansState, keep_params_nonnegative, zero_nans
from gradx.masking import MaskedNode, MaskedState, masked
from gradx.momentum import EmaState, TraceState, ema, trace
from gradx.monitoring import MonitorState, SnapshotState, measure_with_ema, monitor, snapshot
from gradx.multi_steps import (MultiSteps, MultiStepsState, ShouldSkipUpdateFunction,
                               skip_large_updates, skip_not_finite)
from gradx.noise import AddNoiseState, add_noise
from gradx.partition import PartitionState, freeze, partition, selective_transform
from gradx.weight_decay import add_decayed_weights
from gradx.wrappers import (ApplyIfFiniteState, ConditionFn, ConditionallyMaskState,
                            ConditionallyTransformState, apply_if_finite, conditionally_mask,
                            conditionally_transform, flatten)

__all__ = [
    "adaptive_grad_clip", "add_decayed_weights", "add_noise", "AddNoiseState", "apply_if_finite",
    "ApplyIfFiniteState", "chain", "clip_by_block_rms", "clip_by_global_norm", "clip",
    "conditionally_mask", "ConditionallyMaskState", "conditionally_transform",
    "ConditionallyTransformState", "ConditionFn", "ema", "EmaState", "flatten", "freeze",
    "keep_params_nonnegative", "masked", "MaskedNode", "MaskedState", "measure_with_ema",
    "monitor", "MonitorState", "MultiSteps", "MultiStepsState", "named_chain",
    "NonNegativeParamsState", "partition", "PartitionState", "per_example_global_norm_clip",
    "per_example_layer_norm_clip", "selective_transform", "ShouldSkipUpdateFunction",
    "skip_large_updates", "skip_not_finite", "snapshot", "SnapshotState", "trace", "TraceState",
    "unitwise_clip", "unitwise_norm", "zero_nans", "ZeroNansState",
]
