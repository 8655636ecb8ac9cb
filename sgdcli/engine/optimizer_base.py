"""The optimizers' base class: the loop over parameters, the per-parameter state and its checkpoint form,
the subnormal flush, and a step prepared once and replayed (``step_calls``). The formulas are in
``engine/optimizers.py``.

Every update writes into the parameter arrays in place; the caller's gradient arrays are never modified.
Without an L2 weight_decay an update allocates nothing: it works in place and in one scratch array per
parameter. An element-wise update (``elementwise``: AdaGrad, RMSProp, Adam) of a large array runs in parts
on OpenBLAS's threads (``engine/pool.py``), with the same bits.
"""

from __future__ import annotations

import math

import numpy as np

from . import pool
from .allocator import aligned_copy, work_array
from .gradients import BatchProduct, Call, Gradient, OuterProduct, run

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
    replayable = False  # _calls depend only on the arrays and the learning rate, not on t (``step_calls``)

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
        self._state_version = 0  # counts changes of the state's arrays (``state_version``)
        self._flush_interval: tuple[tuple, int] = ((), 0)  # (the settings it was worked out from, the interval)

    @property
    def state_version(self) -> int:
        """A number that changes whenever the state's arrays do (made, loaded, converted): calls prepared by
        ``step_calls`` hold their addresses and are valid while it stays the same."""
        return self._state_version

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
        flush = self.begin_step(params)
        learning_rate = float(learning_rate)  # a plain float keeps float32 arrays float32 (np.float64 would upcast)
        for key, param in params.items():
            state = self._state[key]
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
            self.flush_state()

    def begin_step(self, params: dict[str, np.ndarray]) -> bool:
        """A step's bookkeeping before its updates (``step`` starts with it): state restored by
        ``load_state_dict`` matched to ``params`` (ValueError if it does not match), zero state made for a
        parameter without, the step counted (t). Returns whether the step ends in a subnormal flush."""
        if self._loaded_unverified:
            self._verify_loaded_state(params)
        for key, param in params.items():
            if key not in self._state:
                self._state[key] = self._init_state(param)
                self._state_version += 1
        self.iterations += 1
        return self.iterations % self.flush_every() == 0

    def step_calls(self, params: dict[str, np.ndarray], grads: dict[str, Gradient],
                   learning_rate: float) -> list[Call] | None:
        """The updates of a ``step`` as prepared calls, after ``begin_step`` has made the state: a caller
        that keeps its gradients in the same memory (an OuterProduct's factors included, ``scale`` 1)
        replays them (``pool.run``, then ``flush_state`` when ``begin_step`` says so) step after step, for
        the same bits as ``step``, while the learning rate and ``state_version`` stay as they were.
        None where a step cannot be replayed (``replays``)."""
        if not self.replays(grads):
            return None
        calls: list[Call] = []
        for key, param in params.items():
            calls += self._calls(param, grads[key], self._state[key], float(learning_rate),
                                 work_array(self._scratch, key, param))
        return calls

    def replays(self, grads: dict[str, Gradient]) -> bool:
        """Whether ``step_calls`` prepares a step with these gradients: not for an optimizer whose calls change
        with t (``replayable``: Adam's bias corrections) or are split by the pool (``elementwise``), nor with
        weight decay, nor for a gradient the step would build first (a BatchProduct, or an OuterProduct for an
        optimizer that does not take it as it is)."""
        cls = type(self)
        return (self.replayable and not self.elementwise and not self.weight_decay
                and cls.step is Optimizer.step and cls._update is Optimizer._update  # (a subclass's own: not replayed)
                and all(isinstance(grad, np.ndarray) or isinstance(grad, OuterProduct) and self.takes_factored
                        for grad in grads.values()))

    def settings(self) -> tuple:
        """The hyperparameters as they are now (the public attributes but the step count): prepared calls
        (``step_calls``) hold them, so a caller that replays them prepares them again when they change."""
        return tuple((name, value) for name, value in vars(self).items() if name[0] != "_" and name != "iterations")

    def flush_state(self) -> None:
        """The subnormal flush of every state array (what ``step`` does at the end of a step ``begin_step``
        said flushes), through each parameter's scratch."""
        for key, state in self._state.items():
            for array in state.values():
                _flush_subnormal(array, work_array(self._scratch, key, array))

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
        self._state_version += 1
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
        self._state_version += 1

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_") and k != "iterations")
        return f"{type(self).__name__}({settings})"



def _flush_subnormal(array: np.ndarray, scratch: np.ndarray) -> None:
    """Set the entries of ``array`` with |x| < finfo.tiny / finfo.eps to 0 (see Optimizer)."""
    if array.dtype.kind != "f":
        return
    keep, info = np.abs(array, out=scratch), np.finfo(array.dtype)
    np.greater_equal(keep, info.tiny / info.eps, out=keep)  # 1.0 or 0.0: no boolean temporary
    array *= keep  # NaN compares False but stays NaN (NaN * 0)
