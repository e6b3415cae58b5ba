"""gradx.contrib.mars / scale_by_mars against pytorch_optimizer 4.1.0's MARS (the authors'
defaults: MARS on leaves of rank >= 2, AdamW with its own hyperparameters on the others)."""

import pytest
from pytorch_optimizer import MARS

import gradx
from contrib_support import compare_with_torch


def test_defaults_match_pytorch_optimizer():
    compare_with_torch(gradx.contrib.mars(), lambda p: MARS(p))


def test_every_leaf_with_weight_decay_matches_pytorch_optimizer():
    """optimize_1d: scale_by_mars on every leaf (the 0-d and 1-d ones too), decoupled decay."""
    compare_with_torch(gradx.contrib.mars(0.01, weight_decay=0.1, gamma=0.05, optimize_1d=True),
                       lambda p: MARS(p, lr=0.01, weight_decay=0.1, gamma=0.05, optimize_1d=True))


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="b1"):
        gradx.contrib.scale_by_mars(b1=1.0)
    with pytest.raises(ValueError, match="gamma"):
        gradx.contrib.mars(gamma=-0.1)
    with pytest.raises(ValueError, match="b2_1d"):
        gradx.contrib.mars(b2_1d=2.0)
