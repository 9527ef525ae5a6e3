"""Checks at the public edge: every argument is validated before any work starts.

Each check returns a clean value (a C-contiguous array of the wanted dtype, an
``np.intp`` label vector, a Python number) or raises an error that names the
argument, what was expected and what came. Inputs that are merely inconvenient
(Fortran order, strided views, another numeric dtype, read-only) are copied, never
modified.
"""

from __future__ import annotations

import numbers

import numpy as np

from . import tables


def _describe(value):
    if isinstance(value, np.ndarray):
        return f"array of shape {value.shape} and dtype {value.dtype}"
    return f"{type(value).__name__} {value!r}"[:200]


def check_choice(value, name, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {_describe(value)}")
    return value


def check_positive_int(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {_describe(value)}")
    return int(value)


def check_nonnegative_int(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {_describe(value)}")
    return int(value)


def is_finite_real(value):
    """A finite real number (Python or NumPy), not a bool."""
    return not isinstance(value, (bool, np.bool_)) and isinstance(value, numbers.Real) and bool(np.isfinite(value))


def check_bool(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_positive_float(value, name):
    if not is_finite_real(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {_describe(value)}")
    return float(value)


def check_nonnegative_float(value, name):
    if not is_finite_real(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative finite number, got {_describe(value)}")
    return float(value)


def check_fraction(value, name):
    """A number in [0, 1)."""
    if not is_finite_real(value) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a number in [0, 1), got {_describe(value)}")
    return float(value)


def check_sample_weight(sample_weight, n_samples, name="sample_weight"):
    """None, or finite non-negative weights (n_samples,) as float64."""
    if sample_weight is None:
        return None
    w = np.asarray(sample_weight)
    if w.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {w.dtype}")
    if w.ndim != 1 or len(w) != n_samples:
        raise ValueError(f"{name} must have shape ({n_samples},) (one weight per row), got {w.shape}")
    w = w.astype(np.float64)
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"{name} must be non-negative and finite")
    return w


def check_class_weight(class_weight, labels, n_out, name="class_weight"):
    """None, or the weight of each class (n_out,) from a dict {label: weight} or
    "balanced" (n_samples / (n_classes * count), over the classes present)."""
    if class_weight is None:
        return None
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ValueError(f'{name} must be a dict {{class: weight}} or "balanced", got {class_weight!r}')
        counts = np.bincount(labels, minlength=n_out).astype(np.float64)
        present = counts > 0
        out = np.zeros(n_out)
        out[present] = len(labels) / (present.sum() * counts[present])
        return out
    if not isinstance(class_weight, dict):
        raise TypeError(f'{name} must be a dict {{class: weight}} or "balanced", got {_describe(class_weight)}')
    out = np.ones(n_out)
    unknown = [
        k
        for k in class_weight
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral) or not 0 <= k < n_out
    ]
    if unknown:
        raise ValueError(f"{name} names unknown classes {unknown[:10]}; the classes are 0 .. {n_out - 1}")
    for k, v in class_weight.items():
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real) or not np.isfinite(v) or v < 0:
            raise ValueError(f"{name}[{k!r}] must be a non-negative number, got {_describe(v)}")
        out[int(k)] = float(v)
    return out


def check_dtype(dtype, name="dtype"):
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"{name} must be float32 or float64, got {dtype!r}")
    return dt


def is_sparse(X):
    """Whether X is a scipy.sparse matrix or array (without importing scipy.sparse)."""
    return hasattr(X, "tocsr") and hasattr(X, "nnz")


def count_nonfinite(a):
    """The number of NaN and infinite entries of float array ``a``: one compiled pass
    on every thread where the Cython kernels are built, else NumPy's."""
    a = np.ascontiguousarray(a)
    if a.dtype in (np.float32, np.float64):
        try:
            from ._kernels import _cy
        except ImportError:
            pass
        else:
            return int(_cy.count_nonfinite(a))
    return int(a.size - np.count_nonzero(np.isfinite(a)))


def raise_nonfinite(X, name, dtype):
    """Raises the error of ``check_X`` for an ``X`` whose values in ``dtype`` are not
    all finite: NaN or infinity in X, or values beyond ``dtype``'s range."""
    arr = np.asarray(X)
    if arr.dtype.kind == "f" and count_nonfinite(arr):
        raise ValueError(f"{name} contains NaN or infinity")
    raise ValueError(f"{name} has values too large for {np.dtype(dtype).name}")


def check_X(X, name="X", n_features=None, dtype=np.float64, finite=True):
    """A finite, non-empty 2-D numeric array as C-contiguous ``dtype``; a
    scipy.sparse matrix or array as a canonical CSR matrix (``check_sparse_X``).
    With ``finite=False`` a dense X's values are left for the caller to check
    (``fastmlp.train`` checks them in the pass that converts X to CSR)."""
    if is_sparse(X):
        return check_sparse_X(X, name, n_features, dtype)
    arr = np.asarray(X)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_features), got {arr.ndim}-D of shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} must have at least one row, got shape {arr.shape}")
    if n_features is not None and arr.shape[1] != n_features:
        raise ValueError(f"{name} must have {n_features} columns (the model's n_in), got shape {arr.shape}")
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.ascontiguousarray(arr, dtype=dtype)
    # integers are finite in either dtype; NaN, infinity and values beyond dtype's
    # range are not finite in ``out``
    if finite and arr.dtype.kind == "f" and count_nonfinite(out):
        raise_nonfinite(arr, name, dtype)
    return out


def check_y(y, n_samples, n_out, name="y"):
    """Integer labels (N,) in [0, n_out) or one-hot rows (N, n_out) -> np.intp labels."""
    arr = np.asarray(y)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold integer class labels or one-hot rows, got dtype {arr.dtype}")
    if arr.ndim == 2:
        if arr.shape[1] != n_out:
            raise ValueError(f"{name} one-hot rows must have {n_out} columns (n_out), got shape {arr.shape}")
        ok = np.isin(arr, (0, 1)).all(axis=1) & (arr.sum(axis=1) == 1)
        if not ok.all():
            bad = int(np.flatnonzero(~ok)[0])
            raise ValueError(f"{name} row {bad} is not one-hot (a single 1, zeros elsewhere): {arr[bad][:20]}")
        labels = arr.argmax(axis=1)
    elif arr.ndim == 1:
        if arr.dtype.kind == "f":
            if not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
                raise ValueError(f"{name} must hold integer class labels, got non-integer values")
        labels = arr
    else:
        raise ValueError(f"{name} must be labels (N,) or one-hot (N, n_out), got shape {arr.shape}")
    if len(labels) != n_samples:
        raise ValueError(f"{name} has {len(labels)} entries but X has {n_samples} rows")
    if len(labels) and (labels.min() < 0 or labels.max() >= n_out):
        raise ValueError(
            f"{name} labels must lie in [0, {n_out}) (n_out={n_out}), got values in [{labels.min()}, {labels.max()}]"
        )
    return np.ascontiguousarray(labels, dtype=np.intp)


def check_targets(y, n_samples, n_out, loss, dtype, name="y"):
    """What the loss ``loss`` (a row of ``fastmlp.tables.LOSSES``) compares the
    outputs with: class labels (``check_y``) or a matrix of target values (N,
    n_out) -> C-contiguous in ``dtype`` (a vector is one column), of the values
    the loss takes (finite; 0/1 for "bce"; non-negative for "poisson")."""
    row = tables.loss(loss)
    if row.targets == "labels":
        return check_y(y, n_samples, n_out, name)
    arr = np.asarray(y)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real target values for loss {loss!r}, got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be target values (N,) or (N, n_out) for loss {loss!r}, got shape {arr.shape}")
    if arr.shape[0] != n_samples:
        raise ValueError(f"{name} has {arr.shape[0]} rows but X has {n_samples}")
    if arr.shape[1] != n_out:
        raise ValueError(f"{name} must have {n_out} columns (the model's n_out), got shape {arr.shape}")
    with np.errstate(over="ignore"):  # a value beyond dtype's range is refused as not finite
        out = np.ascontiguousarray(arr, dtype=dtype)
    problem = row.check(out) if out.size else None
    if problem is not None:
        raise ValueError(f"{name} must hold {problem} for loss {loss!r}")
    return out


def check_sparse_X(X, name="X", n_features=None, dtype=np.float64):
    """A scipy.sparse matrix or array (any format: CSC, COO and the others are
    converted to CSR once) as a new canonical ``scipy.sparse.csr_matrix`` of
    ``dtype``: duplicate entries summed, indices sorted, nothing densified. The
    structure is checked first: real finite data, indptr of n_rows + 1
    non-decreasing offsets, column indices in range."""
    import scipy.sparse as sp

    if X.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_features), got {X.ndim}-D of shape {X.shape}")
    if X.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got sparse data of dtype {X.dtype}")
    n_rows, n_cols = X.shape
    if n_rows == 0:
        raise ValueError(f"{name} must have at least one row, got shape {X.shape}")
    if n_features is not None and n_cols != n_features:
        raise ValueError(f"{name} must have {n_features} columns (the model's n_in), got shape {X.shape}")
    if X.format != "csr":
        try:
            X = X.tocsr()
        except (ValueError, IndexError) as exc:
            raise ValueError(f"{name} is not a valid {X.format.upper()} matrix: {exc}") from None
    data, indices, indptr = X.data, X.indices, X.indptr
    if indptr.ndim != 1 or len(indptr) != n_rows + 1:
        raise ValueError(f"{name}.indptr must hold n_rows + 1 = {n_rows + 1} offsets, got {len(indptr)}")
    if indptr[0] != 0 or (np.diff(indptr) < 0).any():
        raise ValueError(f"{name}.indptr must start at 0 and never decrease (CSR row offsets)")
    nnz = int(indptr[-1])
    if nnz > len(indices) or nnz > len(data):
        raise ValueError(f"{name}.indptr ends at {nnz}, beyond the {min(len(indices), len(data))} stored entries")
    indices, data = indices[:nnz], data[:nnz]
    if nnz and (indices.min() < 0 or indices.max() >= n_cols):
        raise ValueError(f"{name} has column indices outside [0, {n_cols}): from {indices.min()} to {indices.max()}")
    with np.errstate(over="ignore", invalid="ignore"):
        values = data.astype(dtype, copy=False)
    if data.dtype.kind == "f" and count_nonfinite(values):  # as check_X: one pass unless it fails
        raise_nonfinite(data, name, dtype)
    # the caller's arrays are shared, never written: the kernels only read them
    out = sp.csr_matrix((values, indices, indptr), shape=(n_rows, n_cols), copy=False)
    if not out.has_canonical_format:
        out = out.copy()
        out.sum_duplicates()  # also sorts each row's indices
    return out
