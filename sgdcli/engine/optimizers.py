"""Gradient-descent optimizers: a base class owning the loop and state, one formula per subclass.

Symbols in the update rules: w is a parameter array, g its gradient, lr the learning rate
passed to ``step``, t the 1-based number of the step being taken. Every update writes into
the parameter arrays in place; the caller's gradient arrays are never modified. Without an
L2 weight_decay an update allocates nothing: it works in place and in one scratch array per
parameter. A gradient may be a ``gradients.OuterProduct`` (a dense weight's from one sample):
SGD and Adam, whose rules only add multiples of g and of g * g, apply its factors with BLAS
rank-1 updates; the others build it first, into a work array kept like the scratch. Updates of
the form y = b * y + a * x (moments, velocity, the weights) are one BLAS pass where NumPy's BLAS
allows (``gradients.add_scaled``), else NumPy's passes through the scratch. An element-wise
update (``elementwise``: AdaGrad, RMSProp, Adam) of a large array runs in parts on OpenBLAS's threads
(``engine/pool.py``), with the same bits.
"""

from __future__ import annotations

import math

import numpy as np

from . import pool
from .allocator import aligned_copy, aligned_full, work_array
from .gradients import BatchProduct, Call, Gradient, OuterProduct, add_scaled, run, scaled_calls, squared_calls


class Optimizer:
    """Base class: iterates over named parameters, keeps lazy per-parameter state and the step count.

    A subclass sets its hyperparameters, returns its zero state from ``_init_state`` (arrays on a cache line:
    ``allocator.aligned_full``) and implements ``_update(w, g, state, lr, scratch)`` in place, or returns it as
    prepared calls from ``_calls`` (an ``elementwise`` one: its parts' calls are built before the pool runs them).
    ``scratch`` is a work array shaped like w whose contents mean nothing: kept from step to step so that an
    update allocates nothing, and never part of the state (``state_dict``). While ``_update`` runs, ``self.iterations``
    counts the step in progress (t). A subclass with ``takes_factored = True`` gets an OuterProduct g as it is
    (touching it only through ``gradients.add_scaled`` / ``scaled_calls`` and ``squared_calls``), else g is built
    first; likewise a BatchProduct with ``takes_products`` (only through ``add_scaled``, each call a gemm).

    ``weight_decay`` is an L2 penalty folded into the gradient, g = g + weight_decay * w (``AdamW``: decoupled decay).

    Subnormal flush: after every ``flush_every()``-th step, state values with |x| < finfo.tiny / finfo.eps
    (9.9e-32 in float32, 1.0e-292 in float64) become 0. A state that only decays (the momentum of a pixel that is
    0 in every sample) otherwise ends in subnormal floats, on which sqrt and division (and on many CPUs every
    operation) run several times slower. A value shrinking by a factor d per step takes 23 ln 2 / -ln d steps
    (float32; float64 more) from that threshold to the subnormals: over 32 for d >= 0.61, 151 for d = 0.9. The
    interval is the largest power of two under that for the state's fastest decay (``DECAYS``; 128 for momentum or
    beta1 0.9), FLUSH_EVERY (32) at least, so a decaying value is caught first, and a flush's three passes come 4x
    less often than every 32 steps. Only values float rounding already makes invisible change: adding such a value
    to any |w| > 1.7e-24 leaves w unchanged, and beside epsilon >= 1e-10 under a square root it is below one
    rounding unit.
    """

    FLUSH_EVERY = 32
    DECAYS: tuple[str, ...] = ()  # the attributes holding what the state is multiplied by each step
    takes_factored = False
    takes_products = False
    elementwise = False  # _calls compute each element from the same element of each array, and write state in place

    def __init__(self, weight_decay: float = 0.0) -> None:
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        self.weight_decay = float(weight_decay)
        self.iterations = 0
        self._state: dict[str, dict[str, np.ndarray]] = {}
        self._scratch: dict[str, np.ndarray] = {}  # work arrays, one per parameter; not state
        self._built: dict[str, np.ndarray] = {}  # where an OuterProduct gradient is built; not state
        # True after load_state_dict until the next step has matched the state to the parameters.
        self._loaded_unverified = False
        self._flush_interval: tuple[tuple, int] = ((), 0)  # (the settings it was worked out from, the interval)

    # --- what a subclass provides -------------------------------------------------------------

    def _init_state(self, param: np.ndarray) -> dict[str, np.ndarray]:
        """Fresh state for one parameter, e.g. ``{"velocity": zeros_like(param)}``."""
        return {}

    def _update(self, param: np.ndarray, grad: Gradient, state: dict[str, np.ndarray], learning_rate: float,
                scratch: np.ndarray) -> None:
        run(self._calls(param, grad, state, learning_rate, scratch))

    def _calls(self, param: np.ndarray, grad: Gradient, state: dict[str, np.ndarray], learning_rate: float,
               scratch: np.ndarray) -> list[Call]:
        """The update as prepared calls (``gradients.scaled_calls``), for a subclass that does not override
        ``_update``: an ``elementwise`` one's parts are built before ``engine/pool`` runs them."""
        raise NotImplementedError

    def flush_every(self) -> int:
        """Steps between subnormal flushes (see the class doc); FLUSH_EVERY set on an instance wins if longer."""
        key = (self.FLUSH_EVERY, *(getattr(self, name) for name in self.DECAYS))
        if self._flush_interval[0] != key:  # worked out again only when a setting has changed
            decays = [d for d in key[1:] if 0 < d < 1]
            steps = 23 * math.log(2) / -math.log(min(decays)) if decays else 0
            self._flush_interval = (key, max(self.FLUSH_EVERY, 1 << int(math.log2(steps)) if steps >= 1 else 1))
        return self._flush_interval[1]

    def _apply_weight_decay(self, param: np.ndarray, grad: Gradient, learning_rate: float) -> Gradient:
        """L2 penalty: return g + weight_decay * w as a new array (the caller's g is untouched)."""
        if not self.weight_decay:
            return grad
        decayed = param * self.weight_decay
        if isinstance(grad, OuterProduct):
            grad.add_to(decayed, 1.0)
        else:  # (a BatchProduct built by rows, as wherever g is built: the same bits when clipping built it first)
            decayed += grad.materialize() if isinstance(grad, BatchProduct) else grad
        return decayed

    # --- the loop -------------------------------------------------------------------------------

    def step(self, params: dict[str, np.ndarray], grads: dict[str, Gradient], learning_rate: float) -> None:
        """Apply one update to every array in ``params`` in place, using ``grads`` with the same keys
        (arrays, or ``gradients.OuterProduct``)."""
        if grads.keys() != params.keys():
            missing = [key for key in params if key not in grads]
            unexpected = [key for key in grads if key not in params]
            raise ValueError(f"gradients do not match parameters: missing {missing}, unexpected {unexpected}")
        for key, param in params.items():
            if grads[key].shape != param.shape:
                raise ValueError(f"gradient for {key!r} has shape {grads[key].shape}, parameter has {param.shape}")
        if self._loaded_unverified:
            self._verify_loaded_state(params)
        # A plain float keeps float32 arrays float32 (an np.float64 scalar would upcast temporaries).
        learning_rate = float(learning_rate)
        self.iterations += 1
        flush = self.iterations % self.flush_every() == 0
        for key, param in params.items():
            state = self._state.get(key)
            if state is None:
                state = self._state[key] = self._init_state(param)
            scratch = work_array(self._scratch, key, param)
            grad = self._apply_weight_decay(param, grads[key], learning_rate)
            in_parts = self.elementwise and param.size >= pool.MIN_ELEMENTS
            rows = in_parts and isinstance(grad, BatchProduct) and grad.product is None and param.flags.c_contiguous
            if not rows and (isinstance(grad, OuterProduct) and not self.takes_factored
                             or isinstance(grad, BatchProduct) and not self.takes_products):
                grad = grad.materialize(out=work_array(self._built, key, param))
            if in_parts and (rows or isinstance(grad, np.ndarray)):  # engine/pool; a BatchProduct g built there
                names, built = tuple(state), work_array(self._built, key, param) if rows else grad
                pool.split_array_calls(lambda parts: self._calls(parts[0], parts[1], dict(zip(names, parts[3:])),
                                       learning_rate, parts[2]), param, built, scratch, *state.values(),
                                       rows=(param.shape[1], grad.rows_call) if rows else None)
                grad = None
            if grad is not None:
                self._update(param, grad, state, learning_rate, scratch)
            if flush:
                for array in state.values():
                    _flush_subnormal(array, scratch)

    # --- saving and restoring -------------------------------------------------------------------

    def state_dict(self) -> dict[str, np.ndarray]:
        """Flat copy of the state: ``"<state name>/<parameter key>"`` arrays plus ``"iterations"``."""
        state = {
            f"{name}/{key}": array.copy()
            for key, per_param in self._state.items()
            for name, array in per_param.items()
        }
        state["iterations"] = np.array(self.iterations, dtype=np.int64)
        return state

    def load_state_dict(self, state: dict[str, np.ndarray], params: dict[str, np.ndarray] | None = None) -> None:
        """Replace the state with a copy of ``state`` (as produced by ``state_dict``).

        Raises ValueError, changing nothing, if an entry is malformed or names state this optimizer does not keep.
        Matching against the parameters (keys, shapes, floating point): now when ``params`` is given, else at ``step``.
        """
        if "iterations" not in state:
            raise ValueError("optimizer state has no 'iterations' entry")
        iterations = np.asarray(state["iterations"])
        if iterations.size != 1 or not np.issubdtype(iterations.dtype, np.integer) or iterations.item() < 0:
            raise ValueError(f"optimizer 'iterations' must be one non-negative integer, got {iterations!r}")
        loaded: dict[str, dict[str, np.ndarray]] = {}
        for entry, value in state.items():
            if entry == "iterations":
                continue
            name, _, key = entry.partition("/")
            if not name or not key:
                raise ValueError(f"unexpected optimizer state entry {entry!r}; expected 'iterations' or '<state>/<parameter>'")
            loaded.setdefault(key, {})[name] = aligned_copy(value)
        for key, arrays in loaded.items():
            expected = sorted(self._init_state(next(iter(arrays.values()))))
            if sorted(arrays) != expected:
                raise ValueError(
                    f"optimizer state for parameter {key!r} has {sorted(arrays)}, but "
                    f"{type(self).__name__} keeps {expected or 'no state'}"
                )
        self.iterations = int(iterations.item())
        self._state = loaded
        self._loaded_unverified = True
        if params is not None:
            self._verify_loaded_state(params)

    def _verify_loaded_state(self, params: dict[str, np.ndarray]) -> None:
        """Match state restored by ``load_state_dict`` to the parameters of the first step after it."""
        unexpected = sorted(self._state.keys() - params.keys())
        # After at least one step an optimizer that keeps state has it for every parameter.
        keeps_state = bool(params) and bool(self._init_state(next(iter(params.values()))))
        missing = sorted(params.keys() - self._state.keys()) if keeps_state and self.iterations else []
        if unexpected or missing:
            raise ValueError(f"optimizer state does not match parameters: missing {missing}, unexpected {unexpected}")
        for key, per_param in self._state.items():
            param = params[key]
            for name, array in per_param.items():
                if array.shape != param.shape:
                    raise ValueError(f"optimizer state {name}/{key} has shape {array.shape}, parameter has {param.shape}")
                if array.dtype.kind != "f":
                    raise ValueError(f"optimizer state {name}/{key} is {array.dtype}; expected floating point")
                per_param[name] = array.astype(param.dtype, copy=False)
        self._loaded_unverified = False

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_") and k != "iterations")
        return f"{type(self).__name__}({settings})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum.

    momentum == 0:  w -= lr * g
    momentum > 0:   v = momentum * v - lr * g;  w += v
    nesterov:       v = momentum * v - lr * g;  w += momentum * v - lr * g
    (v is the "velocity" state, starting at 0.) An OuterProduct g is added by BLAS ger, never built; without
    Nesterov (which reads g twice) a BatchProduct g by one gemm into v (or w), never stored.
    """

    takes_factored = True
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

    def _update(self, param: np.ndarray, grad: Gradient, state: dict[str, np.ndarray], learning_rate: float,
                scratch: np.ndarray) -> None:
        if not self.momentum:
            add_scaled(param, -learning_rate, grad, scratch)
            return
        velocity = state["velocity"]
        add_scaled(velocity, -learning_rate, grad, scratch, decay=self.momentum)
        if self.nesterov:
            add_scaled(param, -learning_rate, grad, scratch)
            add_scaled(param, self.momentum, velocity, scratch)
        elif isinstance(grad, OuterProduct):  # batch 1: a threaded BLAS axpy right after ger made
            param += velocity  # the update bimodal (median 983 us, fastest 250) in the race; NumPy's pass is not
        else:
            add_scaled(param, 1.0, velocity, scratch)


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


def _flush_subnormal(array: np.ndarray, scratch: np.ndarray) -> None:
    """Set the entries of ``array`` with |x| < finfo.tiny / finfo.eps to 0 (see Optimizer)."""
    if array.dtype.kind != "f":
        return
    keep, info = np.abs(array, out=scratch), np.finfo(array.dtype)
    np.greater_equal(keep, info.tiny / info.eps, out=keep)  # 1.0 or 0.0: no boolean temporary
    array *= keep  # NaN compares False but stays NaN (NaN * 0)
