"""The kernels of fastmlp: one driver over thin compiled primitives.

``epochs.py`` is the driver: for a training run it picks the epoch path, builds
the parameter layout and the workspaces that path needs, orders and chunks the
batches, and calls a backend's primitive. A backend is a module that exports
the same primitives with the same signatures (``_np`` the NumPy reference,
``_cy`` Cython and C, ``_nb`` Numba), so one parametrized test suite covers
them all::

    PATHS                                   the epoch paths it implements
    THREADED_PATHS                          those of them that run on several threads
    DEEP_PATHS                              those of them that train several hidden layers
    ACTIVATION_CODES, LOSS_CODES            the codes of fastmlp.tables it has ops for
    SPARSE_CHUNK_ROWS                       examples per chunk of a large batch on the
                                            sparse path (0: batches are taken whole)
    SPARSE_GROUP_MIN, SPARSE_MASK_ROWS      (optional) batches of at least this many
                                            examples, up to SPARSE_MASK_ROWS, update each
                                            touched row once (epochs.sparse_work)

    activation(x, act) -> y                 f(x) of a 1-D array, the activation of code act
    forward_hidden(X, Wh, bh, act) -> H     H = f(X Wh^T + bh)
    forward_logits(H, Wy, by) -> Z          Z = H Wy^T + by
    loss_grad(Z, labels, loss) -> (dZ, loss_sum, n_correct)
                                            dZ = dl/dZ / B; loss summed over rows;
                                            rows whose argmax (first on ties) is the label
    backward_update(X, H, dZ, P, lr, act) -> dH
                                            dH = (dZ Wy) * f'(H) with Wy before the step,
                                            then in place on P: Wy -= lr dZ^T H,
                                            by -= lr sum(dZ), Wh -= lr dH^T X, bh -= lr sum(dH)
    sparse_epoch(P, rows, labels, weights, order, batch, opt, codes, work, n_threads)
    deep_epoch(P, rows, labels, weights, order, batch, opt, codes, work, n_threads)
                                            (compiled backends) the sparse path for a
                                            network of several hidden layers
    blas_epoch(P, X, labels, weights, order, batch, opt, codes, work, n_threads)
    reference_epoch(P, X, labels, weights, order, batch, opt, codes, velocity, second_moment)
                                            -> (loss_sum, n_correct): mini-batch SGD
                                            over the batches of the rows `order`, in
                                            place on P (and its optimizer state), with
                                            the step ``opt`` (epochs.Step: SGD or Adam,
                                            and its settings), the network's ``codes``
                                            (epochs.Codes: activation, loss) and the
                                            sample weights (or None); the last batch
                                            averages over its own size (each backend
                                            has the epochs of its PATHS)
    dense_to_csr(X) -> (data, indices, indptr)
    max_threads() -> int                    the threads OpenMP would use here now

``P`` is the parameter block in the layout of the path (``epochs.SparseNet`` for
the sparse path, ``epochs.DeepNet`` for it with several hidden layers,
``epochs.BlasNet`` for the BLAS path, ``epochs.Params`` or a dict of the
parameters by name, any depth, for the reference), ``rows`` the sparse path's
examples (``epochs.Rows``: CSR or dense rows), ``work`` the path's workspace
(``epochs.SparseWork``, ``epochs.DeepWork``, ``epochs.BlasWork``); an activation
or loss code a backend has no op for raises ValueError before any work. Arrays
are C-contiguous and of one floating dtype (float32 or float64); labels and
orders are ``np.intp``. The primitives trust their inputs otherwise:
``fastmlp.train`` validates at the public edge and the driver builds the
layouts. ``fastmlp.backends.DIFFERENCES`` declares what one compiled backend has
that the other has not, and why.
"""
