"""Optax's ``optax.experimental``: ``aggregating``, transformations of per-example gradients."""

from gradx.experimental import aggregating

__all__ = ["aggregating"]
