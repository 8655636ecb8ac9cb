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
