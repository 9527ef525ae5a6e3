"""Compiled kernels of fastmlp, one module per implementation.

Every module here (``_np`` the NumPy reference, ``_cy`` Cython, ``_nb`` Numba)
offers the same functions with the same contract, so one parametrized test suite
covers them all:

    tanh(x) -> y                                  the tanh the kernels use, 1-D
    forward_hidden(X, Wh, bh) -> H                H = tanh(X Wh^T + bh)
    forward_logits(H, Wy, by) -> Z                Z = H Wy^T + by
    loss_grad(Z, labels, loss) -> (dZ, loss_sum, n_correct)
                                                  dZ = dl/dZ / B; loss summed over rows;
                                                  rows whose argmax (first on ties) is the label
    backward_update(X, H, dZ, Wh, bh, Wy, by, lr) -> dH
                                                  dH = (dZ Wy) * (1 - H*H) with Wy before the
                                                  step, then in place: Wy -= lr dZ^T H,
                                                  by -= lr sum(dZ), Wh -= lr dH^T X, bh -= lr sum(dH)
    train_epoch(X, labels, perm, Wh, bh, Wy, by, lr, batch_size, loss, path="auto")
        -> (loss_sum, n_correct)                  mini-batch SGD over X[perm] in place; the last
                                                  batch averages over its own size

Arrays are C-contiguous and of one floating dtype (float32 or float64); labels
and perm are ``np.intp``; ``loss`` is "ce" or "mse". The kernels trust their
inputs: ``fastmlp.train`` and friends validate at the public edge.
"""
