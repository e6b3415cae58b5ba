"""The names of ``optax.contrib`` that gradx provides, so ``import gradx as optax`` keeps
``optax.contrib.reduce_on_plateau`` working."""

from gradx.plateau import ReduceLROnPlateauState, reduce_on_plateau

__all__ = ["ReduceLROnPlateauState", "reduce_on_plateau"]
