"""`sgdcli optimizers` and the README state other libraries' conventions truly (Keras 3, PyTorch)."""

from __future__ import annotations

import numpy as np
from conftest import REPO

from sgdcli.analysis import reference
from sgdcli.engine.gradients import clip_by_global_norm
from sgdcli.engine.optimizers import SGD, AdaGrad, Adam, RMSProp

ENTRIES = {entry.type: entry for entry in reference.optimizers()}


def one_step(optimizer, w, g, lr=0.1, steps=1):
    w = np.array(w, dtype=np.float64)
    for _ in range(steps):
        optimizer.step({"w": w}, {"w": np.array(g, dtype=np.float64)}, lr)
    return w


def test_adagrad_and_rmsprop_put_epsilon_outside_the_root_and_say_keras_3_puts_it_inside():
    g, eps, lr = np.array([0.5, -2.0]), 0.5, 0.1
    # AdaGrad step 1 from G = 0: G = g^2. sgdcli (PyTorch): lr g / (|g| + eps); Keras 3: lr g / sqrt(g^2 + eps).
    w = one_step(AdaGrad(epsilon=eps), [0, 0], g, lr)
    np.testing.assert_allclose(w, -lr * g / (np.abs(g) + eps))
    assert not np.allclose(w, -lr * g / np.sqrt(g**2 + eps))
    # RMSProp step 1, rho 0.9: s = 0.1 g^2.
    w = one_step(RMSProp(rho=0.9, epsilon=eps), [0, 0], g, lr)
    np.testing.assert_allclose(w, -lr * g / (np.sqrt(0.1 * g**2) + eps))
    for name in ("adagrad", "rmsprop"):
        text = ENTRIES[name].conventions
        assert "outside the square root, as in PyTorch" in text or "outside the square root as in PyTorch" in text
        assert "Keras 3 puts it inside" in text
        assert "as in PyTorch and Keras" not in text


def test_adam_equals_keras_form_with_epsilon_hat():
    # Keras: w -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps_hat). With eps_hat = eps sqrt(1 - b2^t)
    # it is sgdcli's (PyTorch's) w -= lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps): the reference's claim.
    b1, b2, eps, lr, g = 0.9, 0.999, 0.3, 0.1, np.array([0.5, -2.0])
    ours = one_step(Adam(beta1=b1, beta2=b2, epsilon=eps), [1.0, 2.0], g, lr, steps=3)
    w, m, v = np.array([1.0, 2.0]), np.zeros(2), np.zeros(2)
    for t in (1, 2, 3):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        eps_hat = eps * np.sqrt(1 - b2**t)
        w = w - lr * np.sqrt(1 - b2**t) / (1 - b1**t) * m / (np.sqrt(v) + eps_hat)
    np.testing.assert_allclose(ours, w, rtol=1e-12)
    assert "epsilon hat" in ENTRIES["adam"].conventions and "before the bias correction" in ENTRIES["adam"].conventions


def test_weight_decay_covers_biases_so_keras_l2_matches_only_on_kernels():
    # sgdcli decays every parameter it steps, biases included: g + wd w.
    w = one_step(SGD(weight_decay=0.2), [1.0], [0.0], lr=0.1)
    np.testing.assert_allclose(w, [1.0 - 0.1 * 0.2])
    assert "kernel only" in reference.WEIGHT_DECAY and "bias_regularizer" in reference.WEIGHT_DECAY


def test_readme_states_loss_reduction_and_clipping_against_pytorch_and_keras():
    readme = (REPO / "README.md").read_text()
    assert "mean over samples and outputs" in readme and "`reduction='mean'`" in readme
    assert "clip_grad_norm_" in readme and "global_clipnorm" in readme and "norm + 1e-6" in readme
    # clip_norm: g * max_norm / norm when norm > max_norm, without PyTorch's 1e-6.
    grads = {"a": np.array([3.0, 4.0])}
    assert clip_by_global_norm(grads, 1.0) == 5.0
    np.testing.assert_allclose(grads["a"], [0.6, 0.8], rtol=1e-15)
    for omitted in ("[--samples N] [--seed S]", "--x epoch\\|step\\|updates"):
        assert omitted in readme
