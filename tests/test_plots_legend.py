"""plots.png: a legend only when something is labelled (an empty one drew a box and a matplotlib warning)."""

import warnings

from sgdcli import plots


def test_a_figure_with_nothing_labelled_has_no_legend_and_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's "No artists with labels found" fails the test
        image = plots.png(lambda axes: axes.plot([0, 1], [1, 0]))
    assert image.startswith(b"\x89PNG")


def test_a_labelled_line_gets_its_legend(monkeypatch):
    seen = []

    def draw(axes):
        axes.plot([0, 1], [1, 0], label="train")
        monkeypatch.setattr(axes, "legend", lambda *a, **k: seen.append(k))

    plots.png(draw)
    assert seen == [{"fontsize": 7, "loc": "best"}]


import pytest  # noqa: E402


def test_a_loss_that_grew_to_1e296_is_drawn_not_raised(tmp_path):
    # `sgdcli train` with SGD at learning rate 1e30: the losses grew to 1e296 without overflowing, and
    # matplotlib's log ticks past the top overflowed to inf (OverflowError, a traceback after training).
    train = [5.21e57, 8.55e115, 8.56e175, 9.82e235, 1.07e296]
    val = [5.07e57, 8.88e115, 9.27e175, 9.64e235, 1.16e296]
    path = plots.loss_curves([plots.Curve("run", [1, 2, 3, 4, 5], train, val)], "epoch", tmp_path / "loss.png")
    assert path.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("top", [1e150, 1e201, 1.07e296, 1.7e308])
@pytest.mark.parametrize("diverged", [False, True])
def test_a_huge_finite_loss_beside_a_steady_run_is_drawn(tmp_path, top, diverged):
    steady = plots.Curve("steady", [1, 2, 3], [0.7, 0.5, 0.4], [0.8, 0.6, 0.5])
    grown = [0.569, 5.21e57, 8.55e115, 8.56e175, 9.82e235, top]
    huge = plots.Curve("huge", [1, 2, 3, 4, 5, 6], grown, grown, diverged=diverged)
    path = plots.loss_curves([huge, steady], "epoch", tmp_path / "loss.png")
    assert path.read_bytes().startswith(b"\x89PNG")
