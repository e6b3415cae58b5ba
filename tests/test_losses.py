"""gradx.losses against optax 0.2.8: values and gradients of all 32 losses (and the top-level
re-exports), on the edge cases Optax handles, in one compiled function; the defects gradx fixes
against closed forms."""

import inspect
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradx

# Small inputs shared by the cases.
LOGITS = jnp.array([[1.2, -0.8, -0.5, 0.3], [0.9, -1.2, 1.1, -0.1], [0.2, 0.4, -2.0, 1.5]])
ONE_HOT = jax.nn.one_hot(jnp.array([0, 1, 3]), 4)
SOFT = jax.nn.softmax(jnp.array([[0.1, 0.2, 0.3, 0.4], [1.0, 0.0, 0.0, -1.0], [0.0, 2.0, 0.0, 0.0]]))
NEG_INF = LOGITS.at[0, 1].set(-jnp.inf).at[2, 2].set(-jnp.inf)
WHERE = jnp.array([[True, False, True, True], [True, True, True, True], [False, True, False, True]])
ROW_WHERE = jnp.array([True, False, True])
PRED = jnp.array([[0.5, -1.5, 2.0], [3.0, 0.1, -0.2]])
TARGET = jnp.array([[0.0, -1.0, 2.5], [-1.0, 0.1, 0.3]])
INT = jnp.array([0, 1, 3])


def _ctc_inputs():
    logits = jnp.sin(jnp.arange(2 * 5 * 4, dtype=jnp.float32).reshape(2, 5, 4))
    logit_paddings = jnp.array([[0, 0, 0, 0, 0], [0, 0, 0, 1, 1]], jnp.float32)
    labels = jnp.array([[1, 1, 2], [3, 2, 0]])  # a repeated label; a padded label
    label_paddings = jnp.array([[0, 0, 0], [0, 0, 1]], jnp.float32)
    return logits, logit_paddings, labels, label_paddings


def _cases(losses):
    """``name -> (function of the differentiated input x, x)``: each loss on its inputs."""
    ctc_logits, ctc_lp, ctc_labels, ctc_label_p = _ctc_inputs()
    seg_logits = jnp.cos(jnp.arange(2 * 3 * 3 * 3, dtype=jnp.float32).reshape(2, 3, 3, 3))
    seg_targets = jax.nn.one_hot(jnp.array([[[0, 1, 2], [2, 2, 1], [0, 0, 1]],
                                            [[1, 1, 1], [0, 2, 2], [2, 0, 1]]]), 3)
    emb = jnp.array([[0.1, -0.5], [1.3, 0.5], [0.3, 0.3], [0.6, -0.8], [-0.2, 0.9]])
    sp = jnp.array([1.2, -0.3, 0.05])
    fy = losses.make_fenchel_young_loss(jax.scipy.special.logsumexp)
    return {
        "squared_error": (lambda x: losses.squared_error(x, TARGET), PRED),
        "l2_loss": (lambda x: losses.l2_loss(x), PRED),
        "huber_loss": (lambda x: losses.huber_loss(x, TARGET, delta=0.5), PRED),
        "log_cosh": (lambda x: losses.log_cosh(100.0 * x, TARGET), PRED),
        "cosine_similarity": (lambda x: losses.cosine_similarity(x, TARGET, epsilon=0.1), PRED),
        "cosine_where_axis0": (lambda x: losses.cosine_similarity(
            x, TARGET, axis=0, where=PRED > -1.0), PRED),
        "cosine_distance": (lambda x: losses.cosine_distance(x, TARGET, axis=(0, 1)), PRED),
        "sigmoid_bce_soft": (lambda x: losses.sigmoid_binary_cross_entropy(x, SOFT), LOGITS),
        "hinge_loss": (lambda x: losses.hinge_loss(x, 2 * ONE_HOT - 1), LOGITS),
        "perceptron_loss": (lambda x: losses.perceptron_loss(x, 2 * ONE_HOT - 1), LOGITS),
        "sparsemax_loss": (lambda x: losses.sparsemax_loss(x, ONE_HOT), LOGITS),
        "safe_sce_neg_inf": (lambda x: losses.safe_softmax_cross_entropy(x, ONE_HOT), NEG_INF),
        "sce": (lambda x: losses.softmax_cross_entropy(x, SOFT), LOGITS),
        "sce_neg_inf": (lambda x: losses.softmax_cross_entropy(x, ONE_HOT), NEG_INF),
        "sce_where": (lambda x: losses.softmax_cross_entropy(x, ONE_HOT, where=WHERE), NEG_INF),
        "sce_row_where_axis0": (lambda x: losses.softmax_cross_entropy(
            x.T, SOFT.T, axis=0, where=ROW_WHERE), LOGITS),
        "sce_int": (lambda x: losses.softmax_cross_entropy_with_integer_labels(x, INT), LOGITS),
        "sce_int_where": (lambda x: losses.softmax_cross_entropy_with_integer_labels(
            x, INT, where=WHERE), NEG_INF),
        "sce_int_row_where": (lambda x: losses.softmax_cross_entropy_with_integer_labels(
            x, INT, where=ROW_WHERE), LOGITS),
        "sce_int_out_of_range": (lambda x: losses.softmax_cross_entropy_with_integer_labels(
            x, jnp.array([4, -1, 7])), LOGITS),
        "sce_int_axis_tuple": (lambda x: losses.softmax_cross_entropy_with_integer_labels(
            x.reshape(3, 2, 2)[None], jnp.array([[1, 2, 3]]), axis=(2, 3)), LOGITS),
        "sce_int_axis0": (lambda x: losses.softmax_cross_entropy_with_integer_labels(
            x, jnp.array([0, 2, 1, 1]), axis=0), LOGITS),
        "multiclass_hinge": (lambda x: losses.multiclass_hinge_loss(x, INT), LOGITS),
        "multiclass_perceptron": (lambda x: losses.multiclass_perceptron_loss(x, INT), LOGITS),
        "multiclass_sparsemax": (lambda x: losses.multiclass_sparsemax_loss(x, INT), LOGITS),
        "poly_loss": (lambda x: losses.poly_loss_cross_entropy(x, SOFT, epsilon=-1.0), LOGITS),
        "poly_loss_where": (lambda x: losses.poly_loss_cross_entropy(x, ONE_HOT, where=WHERE),
                            LOGITS),
        "kl_divergence": (lambda x: losses.kl_divergence(jax.nn.log_softmax(x), ONE_HOT), LOGITS),
        "kl_where": (lambda x: losses.kl_divergence(jax.nn.log_softmax(x), SOFT, where=WHERE),
                     LOGITS),
        "kl_log_targets": (lambda x: losses.kl_divergence_with_log_targets(
            jax.nn.log_softmax(x), jnp.log(SOFT), axis=0), LOGITS),
        "generalized_kl": (lambda x: losses.generalized_kl_divergence(x, 2 * SOFT), LOGITS),
        "convex_kl": (lambda x: losses.convex_kl_divergence(x, 2 * SOFT), LOGITS),
        "focal": (lambda x: losses.sigmoid_focal_loss(50 * x, ONE_HOT), LOGITS),
        "focal_alpha_gamma": (lambda x: losses.sigmoid_focal_loss(
            x, SOFT, alpha=0.25, gamma=0.5), LOGITS),
        "smooth_labels_where": (lambda x: losses.smooth_labels(x, 0.2, where=WHERE), SOFT),
        "smooth_labels_axis": (lambda x: losses.smooth_labels(x, 0.2, axis=0), SOFT),
        "fenchel_young": (lambda x: fy(x, SOFT), LOGITS),
        "ctc_loss": (lambda x: losses.ctc_loss(x, ctc_lp, ctc_labels, ctc_label_p), ctc_logits),
        "ctc_blank_2": (lambda x: losses.ctc_loss(x, ctc_lp, ctc_labels, ctc_label_p, blank_id=2,
                                                  log_epsilon=-1e4), ctc_logits),
        "ctc_forward_probs": (lambda x: losses.ctc_loss_with_forward_probs(
            x, ctc_lp, ctc_labels, ctc_label_p), ctc_logits),
        "ranking": (lambda x: losses.ranking_softmax_loss(x, SOFT), LOGITS),
        "ranking_where_weights": (lambda x: losses.ranking_softmax_loss(
            x, ONE_HOT, where=WHERE & ROW_WHERE[:, None], weights=SOFT, reduce_fn=jnp.sum),
            LOGITS),
        "ranking_unreduced": (lambda x: losses.ranking_softmax_loss(
            x, ONE_HOT, where=WHERE, reduce_fn=None), LOGITS),
        "dice": (lambda x: losses.dice_loss(x, seg_targets), seg_logits),
        "dice_tversky_weights": (lambda x: losses.dice_loss(
            x, seg_targets, class_weights=jnp.array([0.2, 1.0, 2.0]), alpha=0.3, beta=0.7,
            reduction="sum", ignore_background=True, axis=(1,)), seg_logits),
        "dice_binary_channel": (lambda x: losses.dice_loss(x[..., :1], seg_targets[..., 1]),
                                seg_logits),
        "generalized_dice": (lambda x: losses.multiclass_generalized_dice_loss(
            x, seg_targets, ignore_background=True), seg_logits),
        "binary_dice": (lambda x: losses.binary_dice_loss(x[..., 0], seg_targets[..., 0]),
                        seg_logits),
        "ntxent": (lambda x: losses.ntxent(x, jnp.array([0, 0, 1, 1, 0]), temperature=0.5), emb),
        "triplet": (lambda x: losses.triplet_margin_loss(x[:2], x[2:4], x[3:5], margin=0.5), emb),
        "triplet_axis0": (lambda x: losses.triplet_margin_loss(x[:2].T, x[2:4].T, x[3:5].T,
                                                               axis=0, norm_degree=4), emb),
    }


def _values_and_grads(losses):
    """``name -> (value, gradient of the sum of the value's finite entries)``."""
    def summed(fn, x):
        value = fn(x)
        finite = jnp.nan_to_num(jax.tree.leaves(value)[0], nan=0.0, posinf=0.0, neginf=0.0)
        return jnp.sum(finite), value

    out = {}
    for name, (fn, x) in _cases(losses).items():
        (_, value), grad = jax.value_and_grad(lambda x: summed(fn, x), has_aux=True)(x)  # noqa: B023
        out[name] = (value, grad)
    return out


def test_every_loss_matches_optax_values_and_gradients_under_jit():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        actual, expected = jax.jit(lambda: (_values_and_grads(gradx.losses),
                                            _values_and_grads(optax.losses)))()
    source = inspect.getsource(_cases)
    unused = [n for n in dir(optax.losses) if not n.startswith("_") and f"losses.{n}(" not in source]
    assert not unused, unused
    for name in expected:
        for what, got, want in (("value", actual[name][0], expected[name][0]),
                                ("grad", actual[name][1], expected[name][1])):
            for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
                assert g.shape == w.shape and g.dtype == w.dtype, (name, what)
                np.testing.assert_allclose(g, w, rtol=2e-5, atol=1e-6, equal_nan=True,
                                           err_msg=f"{name} {what}")
    # the edge cases are edges: NaN where Optax gives NaN, finite gradients where it masks
    assert np.isnan(actual["sce_neg_inf"][0][0]) and np.isfinite(actual["safe_sce_neg_inf"][0]).all()
    assert np.isnan(actual["sce_int_out_of_range"][0][0])  # label 4 of 4 classes
    np.testing.assert_allclose(actual["sce_int_row_where"][0][1], 0.0)
    assert np.isfinite(actual["sce_where"][1]).all()


def test_top_level_losses_are_the_losses_module_functions():
    top = [n for n in dir(optax.losses) if not n.startswith("_") and hasattr(optax, n)]
    assert len(top) == 19
    for name in top:
        assert getattr(gradx, name) is getattr(gradx.losses, name), name


def test_bad_inputs_raise_as_optax():
    x = jnp.ones((2, 3))
    with pytest.raises(TypeError, match="logits"):
        gradx.losses.softmax_cross_entropy(jnp.ones((2, 3), jnp.int32), x)
    with pytest.raises(TypeError, match="labels"):
        gradx.losses.softmax_cross_entropy_with_integer_labels(x, jnp.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="must be of type 'int' or 'tuple"):
        gradx.losses.softmax_cross_entropy_with_integer_labels(x, jnp.array([0, 1]), axis=[1])
    with pytest.raises(ValueError):
        gradx.losses.softmax_cross_entropy_with_integer_labels(x, jnp.array([0, 1]), axis=2)
    with pytest.raises(ValueError, match="Shape mismatch"):
        gradx.losses.squared_error(x, jnp.ones(3))
    with pytest.raises(ValueError, match="Unsupported reduction"):
        gradx.losses.dice_loss(x, x, reduction="max")
    with pytest.raises(ValueError, match="same leading dimension"):
        gradx.losses.ntxent(x, jnp.array([0, 1, 1]))
    logits, lp, labels, label_p = _ctc_inputs()
    with pytest.raises(ValueError, match="batch size"):
        gradx.losses.ctc_loss(logits, lp, labels[:1], label_p[:1])
    with pytest.raises(ValueError, match="rank 3"):
        gradx.losses.ctc_loss(logits[0], lp, labels, label_p)
    with pytest.warns(DeprecationWarning, match="generalized_kl_divergence"):
        gradx.losses.convex_kl_divergence(x, x)


def test_triplet_margin_loss_odd_degrees_use_absolute_differences():
    """Optax raises signed differences to the power: its L1 loss is 1.8, not 0.2, here."""
    anchors = jnp.array([[0.0, 0.0], [1.0, 1.0]])
    positives = jnp.array([[0.1, 0.1], [1.1, 1.1]])
    negatives = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    for p in (1, 3):
        d = lambda a, b: (np.sum(np.abs(np.subtract(a, b)) ** p, -1) + 1e-6) ** (1 / p)  # noqa: E731
        expected = np.maximum(d(anchors, positives) - d(anchors, negatives) + 1.0, 0)
        np.testing.assert_allclose(gradx.losses.triplet_margin_loss(
            anchors, positives, negatives, norm_degree=p), expected, rtol=1e-6)
    assert float(optax.losses.triplet_margin_loss(anchors, positives, negatives,
                                                  norm_degree=1)[0]) == pytest.approx(1.8, 1e-5)


def test_dice_loss_on_probabilities_under_jit_and_binary():
    """Optax's sum-to-one check fails under jit and rejects every binary probability."""
    probs = jax.nn.softmax(jnp.array([[[0.3, -1.0, 2.0], [1.0, 0.0, 0.5]]]))
    targets = jax.nn.one_hot(jnp.array([[2, 0]]), 3)
    expected = optax.losses.dice_loss(probs, targets, apply_softmax=False)  # eager: fine
    got = jax.jit(lambda p: gradx.losses.dice_loss(p, targets, apply_softmax=False))(probs)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    p, t = jnp.array([0.2, 0.9]), jnp.array([0.0, 1.0])
    with pytest.raises(ValueError, match="sum to 1"):
        optax.losses.binary_dice_loss(p, t, apply_sigmoid=False)
    # per sample (no spatial axis): 1 - (p·t + 1)/(p·t + (p - p·t)/2 + (t - p·t)/2 + 1)
    i = p * t
    expected = 1 - (i + 1) / (i + 0.5 * (p - i) + 0.5 * (t - i) + 1)
    np.testing.assert_allclose(gradx.losses.binary_dice_loss(p, t, apply_sigmoid=False),
                               expected, rtol=1e-6)
    with pytest.raises(ValueError, match="sum to 1"):
        gradx.losses.dice_loss(2 * probs, targets, apply_softmax=False)
