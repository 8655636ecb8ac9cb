"""A batch-1 update of a dense network prepared once (engine/one_sample.py, issue 16) gives the general
path's bits: forward, loss, backward, check and step, every update, for every activation, loss, dtype,
optimizer setting and schedule the prepared path takes; what it does not take goes the general way.

The general path is the same loop with a step observer attached (layer statistics read the gradients
between the passes, so the loop takes ``Sequential.forward`` / ``backward`` and ``Optimizer.step``)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from sgdcli.engine.activations import Identity, LeakyReLU, ReLU, Sigmoid, Tanh
from sgdcli.engine.init import glorot_uniform, he_uniform
from sgdcli.engine.layers import Dense, Dropout
from sgdcli.engine.losses import BinaryCrossEntropy, CrossEntropy, Huber, MeanSquaredError
from sgdcli.engine.model import Sequential
from sgdcli.engine.one_sample import OneSampleUpdate
from sgdcli.engine.optimizers import SGD, AdaGrad, Adam, RMSProp
from sgdcli.engine.schedules import Constant, CosineDecay, StepDecay
from sgdcli.errors import DivergenceError
from sgdcli.training.loop import Position, Problem, train_epochs


class General:
    """A step observer that wants nothing after the step: its presence sends the loop the general way."""

    def __init__(self) -> None:
        self.steps = 0

    def before_step(self, batch, params, grads) -> bool:
        self.steps += 1
        return False

    def after_step(self, params) -> None:
        raise AssertionError("before_step said no")


def dense_model(rng, widths, activations, dtype=np.float32) -> Sequential:
    return Sequential([Dense.create(d, m, act, he_uniform if isinstance(act, ReLU) else glorot_uniform, rng, dtype)
                       for d, m, act in zip(widths, widths[1:], activations)])


# (model widths, activations, loss, targets): above and below the rank-1 BLAS size (blas.RANK1_MIN_SIZE), one
# output unit (never BLAS), activations computed in place (ReLU) and into arrays of their own.
CASES = {
    "relu-cross-entropy": ((40, 64, 5), (ReLU(), Identity()), CrossEntropy, "labels"),
    "three-layers-tanh-sigmoid": ((12, 48, 30, 4), (Tanh(), Sigmoid(), Identity()), CrossEntropy, "labels"),
    "leaky-relu-mse": ((9, 70, 3), (LeakyReLU(0.1), Identity()), MeanSquaredError, "values"),
    "one-layer-huber-one-output": ((33, 1), (Identity(),), Huber, "values"),
    "binary-cross-entropy": ((20, 50, 1), (ReLU(), Identity()), BinaryCrossEntropy, "binary"),
    "cross-entropy-float-labels": ((40, 64, 5), (ReLU(), Identity()), CrossEntropy, "float labels"),
}
OPTIMIZERS = {
    "plain": lambda: SGD(),
    "momentum": lambda: SGD(momentum=0.9),
    "nesterov": lambda: SGD(momentum=0.5, nesterov=True),
}


def make_problem(case: str, optimizer: str, dtype=np.float32, schedule=None, rows: int = 24, seed: int = 5):
    widths, activations, loss, targets = CASES[case]
    rng = np.random.default_rng(seed)
    model = dense_model(rng, widths, activations, dtype)
    x = rng.normal(size=(rows, widths[0])).astype(dtype)
    classes = widths[-1]
    y = {"labels": rng.integers(0, classes, size=rows),
         "float labels": rng.integers(0, classes, size=rows).astype(np.float64),
         "values": rng.normal(size=(rows, classes)).astype(dtype),
         "binary": rng.integers(0, 2, size=(rows, 1)).astype(dtype)}[targets]
    return Problem(model=model, loss=loss(), optimizer=OPTIMIZERS[optimizer](), schedule=schedule or Constant(0.02),
                   x=x, y=y, batch_size=1, shuffle=True)


def train(problem: Problem, epochs: int, observer=None) -> list[float]:
    losses: list[float] = []
    for _ in train_epochs(problem, Position(), epochs, np.random.default_rng(1), np.random.default_rng(2),
                          on_batch=lambda batch, value: losses.append(value), observer=observer):
        pass
    return losses


def assert_same_bits(a: Problem, b: Problem) -> None:
    for key, value in a.model.state_dict().items():
        np.testing.assert_array_equal(value, b.model.state_dict()[key], strict=True, err_msg=key)
    state_a, state_b = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert state_a.keys() == state_b.keys()
    for key, value in state_a.items():
        np.testing.assert_array_equal(value, state_b[key], strict=True, err_msg=key)


@pytest.fixture
def counted(monkeypatch) -> list[int]:
    """How many updates the prepared path ran (so that a comparison cannot pass by both going the general way)."""
    ran: list[int] = []
    step = OneSampleUpdate.step
    monkeypatch.setattr(OneSampleUpdate, "step", lambda self, lr: ran.append(1) or step(self, lr))
    return ran


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("case", CASES)
def test_the_prepared_update_gives_the_general_paths_bits(case: str, optimizer: str, counted) -> None:
    prepared, general = make_problem(case, optimizer), make_problem(case, optimizer)
    observer = General()
    losses = train(prepared, 3), train(general, 3, observer)
    assert len(counted) == 3 * 24 and observer.steps == 3 * 24
    assert losses[0] == losses[1]
    assert_same_bits(prepared, general)
    start = make_problem(case, optimizer).model.state_dict()
    assert any(not np.array_equal(v, start[k]) for k, v in prepared.model.state_dict().items())  # it trained


@pytest.mark.parametrize("schedule", [CosineDecay(0.1, 40), StepDecay(0.1, 10, 0.5)], ids=["cosine", "step"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_changing_learning_rate_and_float64_give_the_same_bits(schedule, dtype, counted) -> None:
    prepared = make_problem("three-layers-tanh-sigmoid", "momentum", dtype, schedule)
    general = make_problem("three-layers-tanh-sigmoid", "momentum", dtype, schedule)
    assert train(prepared, 2) == train(general, 2, General())
    assert counted and all(a.dtype == dtype for a in prepared.model.state_dict().values())
    assert_same_bits(prepared, general)


def test_state_loaded_between_updates_is_the_state_the_next_updates_write() -> None:
    # load_state_dict replaces the velocity arrays: the prepared calls, which hold addresses, are made again
    # (replayed as they were, they would update the old arrays and leave the loaded ones behind).
    prepared, general = make_problem("relu-cross-entropy", "momentum"), make_problem("relu-cross-entropy", "momentum")
    update = OneSampleUpdate.prepare(prepared.model, prepared.loss, prepared.optimizer, prepared.x, prepared.y)
    params = general.model.parameters()
    for row in range(24):
        if row == 12:
            for problem in (prepared, general):
                old = problem.optimizer._state["0.weight"]["velocity"]
                problem.optimizer.load_state_dict(problem.optimizer.state_dict(), problem.model.parameters())
                assert problem.optimizer._state["0.weight"]["velocity"] is not old
        xb, yb = prepared.x[row:row + 1], prepared.y[row:row + 1]
        out, caches = general.model.forward(xb, training=True)
        value, dout = general.loss.value_and_grad(out, yb)
        assert update.gradient(xb, yb) == value
        update.step(0.02)
        general.optimizer.step(params, general.model.backward(dout, caches, factored=True), 0.02)
        assert_same_bits(prepared, general)


@pytest.mark.parametrize("optimizer, model", [
    (Adam, None), (RMSProp, None), (AdaGrad, None), (lambda: SGD(momentum=0.9, weight_decay=1e-3), None),
    (SGD, "dropout")])
def test_what_it_does_not_take_goes_the_general_way(optimizer, model) -> None:
    rng = np.random.default_rng(0)
    layers = [Dense.create(6, 8, ReLU(), he_uniform, rng, np.float32)]
    if model == "dropout":
        layers.append(Dropout(0.5))
    layers.append(Dense.create(8, 3, Identity(), glorot_uniform, rng, np.float32))
    x = np.zeros((3, 6), dtype=np.float32)
    assert OneSampleUpdate.prepare(Sequential(layers), CrossEntropy(), optimizer(), x, np.array([0, 1, 2])) is None


@pytest.mark.parametrize("bad", [7, -1])
def test_a_label_out_of_range_gets_cross_entropys_own_message(bad: int, counted) -> None:
    # Checked each update (a label may change between epochs): out of range, the loss's own check reports it.
    problem = make_problem("relu-cross-entropy", "plain", rows=6)
    epochs = train_epochs(problem, Position(), 3, np.random.default_rng(1), np.random.default_rng(2))
    next(epochs)
    problem.y[4] = bad
    with pytest.raises(ValueError, match=f"class label {bad} out of range for 5 outputs"):
        next(epochs)
    assert counted


@pytest.mark.parametrize("layout", ["fortran", "strided", "float64 rows"])
def test_rows_the_general_path_reads_in_place_only_if_contiguous(layout: str, counted) -> None:
    # The general path's first weight gradient reads the row itself: BLAS for a contiguous one, NumPy's passes
    # for a strided one (other bits). Rows not contiguous in the model's dtype go the general way; rows of
    # another dtype are converted on entry (a contiguous copy) either way, so those take the prepared path.
    problems = make_problem("relu-cross-entropy", "momentum"), make_problem("relu-cross-entropy", "momentum")
    for problem in problems:
        problem.x = {"fortran": np.asfortranarray(problem.x),
                     "strided": np.repeat(problem.x, 2, axis=1)[:, ::2],
                     "float64 rows": problem.x.astype(np.float64)}[layout]
    prepared = OneSampleUpdate.prepare(problems[0].model, problems[0].loss, problems[0].optimizer,
                                       problems[0].x, problems[0].y)
    assert (prepared is not None) == (layout == "float64 rows")
    assert train(problems[0], 2) == train(problems[1], 2, General())
    assert bool(counted) == (layout == "float64 rows")
    assert_same_bits(*problems)


@pytest.mark.parametrize("x", [np.zeros(24, np.float32), np.zeros((24, 39), np.float32), np.zeros((24, 1, 40), np.float32)],
                         ids=["one-dimensional", "too narrow", "three-dimensional"])
def test_inputs_that_do_not_fit_get_the_dense_layers_message(x) -> None:
    problem = make_problem("relu-cross-entropy", "plain")
    problem.x = x
    assert OneSampleUpdate.prepare(problem.model, problem.loss, problem.optimizer, problem.x, problem.y) is None
    with pytest.raises(ValueError, match="Dense layer expects inputs of shape"):
        train(problem, 1)


class SmoothedCrossEntropy(CrossEntropy):
    def value_and_grad(self, pred, target):
        value, grad = super().value_and_grad(pred, target)
        return value * 0.5, grad * 0.5


class DampedSGD(SGD):
    def _update(self, param, grad, state, learning_rate, scratch):
        super()._update(param, grad, state, learning_rate * 0.5, scratch)


@pytest.mark.parametrize("subclass", ["loss", "optimizer"])
def test_a_subclass_computes_its_own_way(subclass: str) -> None:
    problems = make_problem("relu-cross-entropy", "momentum"), make_problem("relu-cross-entropy", "momentum")
    for problem in problems:
        if subclass == "loss":
            problem.loss = SmoothedCrossEntropy()
        else:
            problem.optimizer = DampedSGD(momentum=0.9)
    assert train(problems[0], 2) == train(problems[1], 2, General())
    assert_same_bits(*problems)
    reference = make_problem("relu-cross-entropy", "momentum")
    train(reference, 2)
    assert not np.array_equal(reference.model.state_dict()["0.weight"], problems[0].model.state_dict()["0.weight"])


def changed_after_the_first_epoch(change) -> tuple[Problem, Problem]:
    """Two runs of three epochs, prepared and general, with ``change(problem)`` after the first."""
    problems = make_problem("relu-cross-entropy", "momentum"), make_problem("relu-cross-entropy", "momentum")
    for problem, observer in zip(problems, (None, General())):
        epochs = train_epochs(problem, Position(), 3, np.random.default_rng(1), np.random.default_rng(2),
                              observer=observer)
        next(epochs)
        change(problem)
        for _ in epochs:
            pass
    return problems


SETTINGS = {"momentum": ("momentum", 0.5), "weight decay": ("weight_decay", 1e-2), "nesterov": ("nesterov", True)}


@pytest.mark.parametrize("change", SETTINGS)
def test_settings_changed_between_epochs_are_the_ones_the_next_updates_use(change: str, counted) -> None:
    problems = changed_after_the_first_epoch(lambda problem: setattr(problem.optimizer, *SETTINGS[change]))
    assert len(counted) == 3 * 24
    assert_same_bits(*problems)


@pytest.mark.parametrize("replaced", ["optimizer", "loss"])
def test_an_optimizer_or_loss_replaced_between_epochs_is_the_one_used(replaced: str, counted) -> None:
    new = {"optimizer": lambda: SGD(momentum=0.5), "loss": SmoothedCrossEntropy}[replaced]
    problems = changed_after_the_first_epoch(lambda problem: setattr(problem, replaced, new()))
    assert len(counted) == 24  # the first epoch; the rest went the general way
    assert_same_bits(*problems)


@pytest.mark.parametrize("poison, message", [(np.nan, "the loss is nan"),
                                             (1e30, r"the gradient of layer 0 \(0.weight\) overflowed")])
def test_divergence_is_reported_as_the_general_path_reports_it(poison: float, message: str, counted) -> None:
    reports, weights = [], []
    for observer in (None, General()):
        problem = make_problem("relu-cross-entropy", "momentum", rows=10)
        problem.x[6, 3] = poison
        position = Position()
        with pytest.raises(DivergenceError, match=message) as raised:
            for _ in train_epochs(problem, position, 1, np.random.default_rng(1), np.random.default_rng(2),
                                  observer=observer):
                pass
        reports.append((str(raised.value), position.updates))
        weights.append(problem.model.state_dict())
    assert reports[0] == reports[1] and 0 < reports[0][1] < 10 and len(counted) == reports[0][1]
    for key, value in weights[0].items():  # the update that would apply it was not applied, either way
        np.testing.assert_array_equal(value, weights[1][key], strict=True)


def test_an_update_allocates_nothing_weight_sized_and_stays_in_its_dtype() -> None:
    rng = np.random.default_rng(3)
    model = dense_model(rng, (300, 120, 3), (ReLU(), Identity()))
    optimizer = SGD(momentum=0.9)
    x, y = rng.normal(size=(40, 300)).astype(np.float32), rng.integers(0, 3, size=40)
    update = OneSampleUpdate.prepare(model, CrossEntropy(), optimizer, x, y)
    for row in range(2):  # the first step makes the velocity
        update.gradient(x[row:row + 1], y[row:row + 1])
        update.step(0.01)
    tracemalloc.start()
    try:
        for row in range(2, 40):
            update.gradient(x[row:row + 1], y[row:row + 1])
            assert update.surely_finite()
            update.step(0.01)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 300 * 120 * 4 // 4, peak  # a quarter of the first weight: small rows only
    arrays = [*model.state_dict().values(), *update._z, *update._a, *update._dz, *update._dx[1:],
              *(v for k, v in optimizer.state_dict().items() if k != "iterations")]
    assert {a.dtype for a in arrays} == {np.dtype(np.float32)}
    assert optimizer.iterations == 40
