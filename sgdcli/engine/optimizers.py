"""Gradient-descent optimizers: one formula per class; the loop, the state and its checkpoint form are the
base class's (``engine/optimizer_base``).

Symbols in the update rules: w is a parameter array, g its gradient, lr the learning rate
passed to ``step``, t the 1-based number of the step being taken. A gradient may be a
``gradients.OuterProduct`` (a dense weight's from one sample): SGD and Adam, whose rules only add
multiples of g and of g * g, apply its factors with BLAS rank-1 updates; the others build it first,
into a work array kept like the scratch. Updates of the form y = b * y + a * x (moments, velocity,
the weights) are one BLAS pass where NumPy's BLAS allows (``gradients.add_scaled``), else NumPy's
passes through the scratch.
"""

from __future__ import annotations

import math

import numpy as np

from . import blas
from .allocator import aligned_full
from .gradients import Call, Gradient, OuterProduct, scaled_calls, squared_calls
from .optimizer_base import Optimizer

__all__ = ["Optimizer", "SGD", "AdaGrad", "RMSProp", "Adam", "AdamW"]

PRE_DECAY_MIN = 2.0**-10  # the least momentum whose batch-1 update divides g by it (SGD._rank_one_calls)


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum.

    momentum == 0:  w -= lr * g
    momentum > 0:   v = momentum * v - lr * g;  w += v
    nesterov:       v = momentum * v - lr * g;  w += momentum * v - lr * g
    (v is the "velocity" state, starting at 0.) An OuterProduct g is added by BLAS ger, never built (with
    momentum, ger then one pass over w and v: ``_rank_one_calls``); without Nesterov (which reads g twice) a
    BatchProduct g by one gemm into v (or w), never stored.
    """

    takes_factored = True
    replayable = True
    DECAYS = ("momentum",)

    @property
    def takes_products(self) -> bool:
        return not self.nesterov

    def __init__(self, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0) -> None:
        super().__init__(weight_decay)
        if not momentum >= 0:
            raise ValueError(f"momentum must be >= 0, got {momentum}")
        if nesterov and momentum == 0:
            raise ValueError("nesterov momentum needs momentum > 0")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)

    def _init_state(self, param: np.ndarray) -> dict[str, np.ndarray]:
        return {"velocity": aligned_full(param.shape, param.dtype, 0)} if self.momentum else {}

    def _calls(self, param: np.ndarray, grad: Gradient, state: dict[str, np.ndarray], learning_rate: float,
               scratch: np.ndarray) -> list[Call]:
        if not self.momentum:
            return scaled_calls(param, -learning_rate, grad, scratch)
        velocity = state["velocity"]
        if isinstance(grad, OuterProduct) and not self.nesterov:
            calls = self._rank_one_calls(param, grad, velocity, learning_rate)
            if calls is not None:
                return calls
        calls = scaled_calls(velocity, -learning_rate, grad, scratch, decay=self.momentum)
        if self.nesterov:
            return calls + scaled_calls(param, -learning_rate, grad, scratch) + scaled_calls(param, self.momentum,
                                                                                           velocity, scratch)
        if isinstance(grad, OuterProduct):  # batch 1: a threaded BLAS axpy right after ger made the update
            return calls + [(np.add, (param, velocity, param))]  # bimodal (median 983 us, fastest 250); NumPy's is not
        return calls + scaled_calls(param, 1.0, velocity, scratch)

    def _rank_one_calls(self, param: np.ndarray, grad: OuterProduct, velocity: np.ndarray,
                        learning_rate: float) -> list[Call] | None:
        """Momentum with a rank-1 g (batch 1) in two passes: v' = v - (lr / m) g (BLAS ``ger``), then
        (w, v) = (w + m v', m v') in one pass over both (BLAS ``rotm``): v = m v - lr g and w += v up to
        rounding, with one read of v fewer than ``gemm`` (beta = m: its scaling pass, then the product's) and
        w += v (784 x 512, one thread, AMD Zen 5: 48 against 54 us). Only for momentum >= PRE_DECAY_MIN (lr / m at most 1024 lr:
        v' overflows only where lr g itself is near float32's limit) and where BLAS runs ``rotm``; else None.
        rotm reads w into v's row too (0 * w): an infinite weight makes its velocity NaN, and the divergence
        check stops training at the next update, where w += v went on with the infinite weight."""
        if self.momentum < PRE_DECAY_MIN:
            return None
        rotation = blas.rotm_call(param, velocity, 1.0, self.momentum, 0.0, self.momentum)
        if rotation is None:
            return None
        return grad.add_calls(velocity, -learning_rate / self.momentum) + [rotation]


class AdaGrad(Optimizer):
    """AdaGrad: per-coordinate step sizes shrinking with the accumulated squared gradients.

    G += g * g;  w -= lr * g / (sqrt(G) + epsilon)
    (G is the "accumulator" state, starting at ``initial_accumulator``.)
    """

    elementwise = True

    def __init__(self, epsilon: float = 1e-10, initial_accumulator: float = 0.0, weight_decay: float = 0.0) -> None:
        super().__init__(weight_decay)
        if not epsilon >= 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon}")
        if not initial_accumulator >= 0:
            raise ValueError(f"initial_accumulator must be >= 0, got {initial_accumulator}")
        self.epsilon = float(epsilon)
        self.initial_accumulator = float(initial_accumulator)

    def _init_state(self, param: np.ndarray) -> dict[str, np.ndarray]:
        return {"accumulator": aligned_full(param.shape, param.dtype, self.initial_accumulator)}

    def _calls(self, param: np.ndarray, grad: np.ndarray, state: dict[str, np.ndarray], learning_rate: float,
               scratch: np.ndarray) -> list[Call]:
        accumulator, step = state["accumulator"], scratch
        return [*squared_calls(accumulator, 1.0, grad, scratch),
                (np.sqrt, (accumulator, step)), (np.add, (step, self.epsilon, step)),  # sqrt(G) + epsilon
                (np.divide, (grad, step, step)),
                *scaled_calls(param, -learning_rate, step, scratch)]


class RMSProp(Optimizer):
    """RMSProp (PyTorch convention for momentum).

    s = rho * s + (1 - rho) * g * g
    momentum == 0:  w -= lr * g / (sqrt(s) + epsilon)
    momentum > 0:   b = momentum * b + g / (sqrt(s) + epsilon);  w -= lr * b
    (s is the "mean_square" state and b the "momentum_buffer" state, both starting at 0.)
    """

    DECAYS = ("rho", "momentum")
    elementwise = True

    def __init__(self, rho: float = 0.9, epsilon: float = 1e-8, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        super().__init__(weight_decay)
        if not 0 <= rho < 1:
            raise ValueError(f"rho must be in [0, 1), got {rho}")
        if not epsilon >= 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon}")
        if not momentum >= 0:
            raise ValueError(f"momentum must be >= 0, got {momentum}")
        self.rho = float(rho)
        self.epsilon = float(epsilon)
        self.momentum = float(momentum)

    def _init_state(self, param: np.ndarray) -> dict[str, np.ndarray]:
        state = {"mean_square": aligned_full(param.shape, param.dtype, 0)}
        if self.momentum:
            state["momentum_buffer"] = aligned_full(param.shape, param.dtype, 0)
        return state

    def _calls(self, param: np.ndarray, grad: np.ndarray, state: dict[str, np.ndarray], learning_rate: float,
               scratch: np.ndarray) -> list[Call]:
        mean_square, direction = state["mean_square"], scratch
        calls = [*squared_calls(mean_square, 1 - self.rho, grad, scratch, decay=self.rho),
                 (np.sqrt, (mean_square, direction)), (np.add, (direction, self.epsilon, direction)),
                 (np.divide, (grad, direction, direction))]  # g / (sqrt(s) + epsilon)
        if self.momentum:
            buffer = state["momentum_buffer"]
            calls += scaled_calls(buffer, 1.0, direction, scratch, decay=self.momentum)
            direction = buffer
        return calls + scaled_calls(param, -learning_rate, direction, scratch)


class Adam(Optimizer):
    """Adam, with epsilon outside the square root (as PyTorch and Keras).

    m = beta1 * m + (1 - beta1) * g;   v = beta2 * v + (1 - beta2) * g * g
    m_hat = m / (1 - beta1**t);        v_hat = v / (1 - beta2**t)
    w -= lr * m_hat / (sqrt(v_hat) + epsilon)
    (m is the "first_moment" state and v the "second_moment" state, both starting at 0.) An OuterProduct g
    enters m and v by BLAS ger (g * g = x² ⊗ dz² is rank-1 too), never built.
    """

    takes_factored = True
    elementwise = True
    DECAYS = ("beta1", "beta2")

    def __init__(self, beta1: float = 0.9, beta2: float = 0.999, epsilon: float = 1e-8, weight_decay: float = 0.0) -> None:
        super().__init__(weight_decay)
        for label, beta in (("beta1", beta1), ("beta2", beta2)):
            if not 0 <= beta < 1:
                raise ValueError(f"{label} must be in [0, 1), got {beta}")
        if not epsilon >= 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon}")
        self.beta1 = float(beta1)
        self.beta2 = float(beta2)
        self.epsilon = float(epsilon)

    def _init_state(self, param: np.ndarray) -> dict[str, np.ndarray]:
        return {name: aligned_full(param.shape, param.dtype, 0) for name in ("first_moment", "second_moment")}

    def _calls(self, param: np.ndarray, grad: Gradient, state: dict[str, np.ndarray], learning_rate: float,
               scratch: np.ndarray) -> list[Call]:
        t = self.iterations
        m, v, step = state["first_moment"], state["second_moment"], scratch
        # Both bias corrections fold into scalars, with c = sqrt(1 - beta2**t):
        # lr m_hat / (sqrt(v_hat) + eps) = (lr c / (1 - beta1**t)) m / (sqrt(v) + eps c).
        c = math.sqrt(1 - self.beta2**t)
        return [*scaled_calls(m, 1 - self.beta1, grad, scratch, decay=self.beta1),
                *squared_calls(v, 1 - self.beta2, grad, scratch, decay=self.beta2),
                (np.sqrt, (v, step)), (np.add, (step, self.epsilon * c, step)), (np.divide, (m, step, step)),
                *scaled_calls(param, -learning_rate * c / (1 - self.beta1**t), step, scratch)]


class AdamW(Adam):
    """Adam with decoupled weight decay (PyTorch convention), applied before the Adam step:

    w -= lr * weight_decay * w;  then the Adam update with the raw gradient g.
    """

    def __init__(self, beta1: float = 0.9, beta2: float = 0.999, epsilon: float = 1e-8, weight_decay: float = 0.01) -> None:
        super().__init__(beta1, beta2, epsilon, weight_decay)

    def _apply_weight_decay(self, param: np.ndarray, grad: Gradient, learning_rate: float) -> Gradient:
        if self.weight_decay:
            param *= 1 - learning_rate * self.weight_decay
        return grad
