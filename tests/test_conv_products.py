"""The conv weight gradient's product in chunks of its inner dimension (engine/conv.py ``summed_product``):
the plain product's value for every split of the inner dimension, and the layers' gradients through it."""

from __future__ import annotations

import numpy as np
import pytest

from sgdcli.analysis.gradcheck import check_layer
from sgdcli.engine import conv
from sgdcli.engine.activations import Identity
from sgdcli.engine.conv import Conv2d, summed_product
from sgdcli.engine.init import he_uniform


@pytest.mark.parametrize("inner", [5, 16, 32, 33, 100])  # below two chunks, whole chunks, a remainder
def test_summed_product_is_the_product(monkeypatch, inner: int) -> None:
    monkeypatch.setattr(conv, "INNER_CHUNK", 16)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, inner)), rng.normal(size=(inner, 4))
    np.testing.assert_allclose(summed_product(a, b), a @ b, rtol=1e-13, atol=1e-13)
    transposed = rng.normal(size=(inner, 3))  # strided rows, as a transposed view
    np.testing.assert_allclose(summed_product(transposed.T, b), transposed.T @ b, rtol=1e-13, atol=1e-13)


def test_summed_product_at_the_default_chunk_in_float32() -> None:
    # the race's conv 1 shape, scaled down: 10 rows of columns, 5000 output pixels (4 chunks and a rest)
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(10, 5000)).astype(np.float32), rng.normal(size=(5000, 32)).astype(np.float32)
    got = summed_product(a, b)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, a.astype(np.float64) @ b.astype(np.float64), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("bias", [True, False])
def test_few_channel_conv_gradients_through_chunked_products(monkeypatch, bias: bool) -> None:
    # 2 images of 9x8 outputs = 144 rows of dz: chunks of 16 and a rest of 0, then of 40 and a rest of 24
    rng = np.random.default_rng(2)
    for chunk in (16, 40):
        monkeypatch.setattr(conv, "INNER_CHUNK", chunk)
        layer = Conv2d.create(2, 3, (3, 3), Identity(), he_uniform, rng, np.float64, padding=(1, 1, 1, 0), bias=bias)
        if bias:
            layer.params["bias"][:] = rng.normal(size=3)
        checks = check_layer(layer, rng.normal(size=(2, 2, 9, 9)), rng=rng)
        assert {check.name for check in checks} == {"x", *layer.params}
        assert all(check.passed for check in checks), [str(c) for c in checks if not c.passed]
