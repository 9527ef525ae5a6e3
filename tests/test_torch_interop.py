"""PyTorch interop: the same network both ways, and the same SGD step."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from helpers import ACTIVATIONS, BACKENDS  # noqa: E402

import fastmlp  # noqa: E402


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_gives_the_same_logits(dtype, activation):
    m = fastmlp.MLP(7, 5, 3, dtype=dtype, init="normal", seed=4, activation=activation)
    seq = m.to_torch()
    module = fastmlp.tables.activation(activation).torch
    assert [type(layer).__name__ for layer in seq] == ["Linear", module, "Linear"]
    X = np.random.default_rng(0).normal(size=(11, 7)).astype(dtype)
    with torch.no_grad():
        torch_logits = seq(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(torch_logits, m.logits(X), rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)
    back = fastmlp.MLP.from_torch(seq)
    assert back.dtype == dtype and back.activation == activation
    for k in fastmlp.reference.PARAM_NAMES:
        np.testing.assert_array_equal(back.params[k], m.params[k])


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch", [1, 8])
def test_one_sgd_step_matches_torch_autograd(backend, batch, activation):
    m = fastmlp.MLP(6, 9, 4, dtype=np.float64, init="normal", seed=1, activation=activation)
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(batch, 6)), rng.integers(0, 4, batch)
    seq = m.to_torch()
    opt = torch.optim.SGD(seq.parameters(), lr=0.3)
    opt.zero_grad()
    torch.nn.CrossEntropyLoss()(seq(torch.from_numpy(X)), torch.from_numpy(y)).backward()
    opt.step()
    fastmlp.train(m, X, y, epochs=1, batch_size=batch, lr=0.3, backend=backend, shuffle=False)
    stepped = fastmlp.MLP.from_torch(seq)
    for k in fastmlp.reference.PARAM_NAMES:
        np.testing.assert_allclose(m.params[k], stepped.params[k], rtol=1e-12, atol=1e-14)


def test_from_torch_rejects_other_architectures():
    with pytest.raises(ValueError, match="Sequential"):
        fastmlp.MLP.from_torch(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.GELU(), torch.nn.Linear(4, 2)))
    with pytest.raises(ValueError, match="Sequential"):
        fastmlp.MLP.from_torch(torch.nn.Linear(3, 4))
