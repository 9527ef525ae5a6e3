"""
Benchmark: seconds per epoch against the peers
==============================================

``fastmlp bench --json PATH`` times one epoch of every backend and every peer
(the NumPy reference loop, scikit-learn's ``MLPClassifier``, and PyTorch where
it is installed) at each batch size, in one process, and writes the
measurements with the machine they ran on. This example runs it and draws the
table. Set ``$FASTMLP_BENCH_JSON`` to the path of a file written earlier (say, on
a quiet machine) to draw that one instead.

The figures of this page were measured while the documentation was built, on a
machine that may be shared and noisy; the ratios, all taken in one run, are what
to read.
"""

import json
import os
import subprocess
import sys
import tempfile

import matplotlib.pyplot as plt
import numpy as np

path = os.environ.get("FASTMLP_BENCH_JSON")
if not path:
    path = os.path.join(tempfile.mkdtemp(), "bench.json")
    network = "mnist" if os.environ.get("FASTMLP_MNIST_DIR") else "circles"
    command = [
        sys.executable,
        "-m",
        "fastmlp.cli",
        "bench",
        "--networks",
        network,
        "--batch-sizes",
        "1,10,64,256,full",
        "--budget",
        "0.3",
        "--no-gil",
        "--json",
        path,
    ]
    if network == "mnist":
        command += ["--data-dir", os.environ["FASTMLP_MNIST_DIR"]]
    subprocess.run(command, check=True, capture_output=True)
with open(path) as fh:
    measured = json.load(fh)

env = measured["environment"]
print(
    f"{env['date']}, fastmlp {env['fastmlp']}, {env['cpu']} ({env['simd']}), {env['cores']} cores, "
    f"{env['threads']} threads; BLAS: {env['blas']}; {env['dtype']}"
)

rows = measured["rows"]
networks = sorted({r["network"] for r in rows})
fig, axes = plt.subplots(1, len(networks), figsize=(7 * len(networks), 4.8), squeeze=False)
for ax, network in zip(axes[0], networks, strict=True):
    part = [r for r in rows if r["network"] == network]
    batches = list(dict.fromkeys(str(r["batch"]) for r in part))
    backends = list(dict.fromkeys(r["backend"] for r in part))
    width = 0.8 / len(backends)
    for k, backend in enumerate(backends):
        seconds = [
            next((r["seconds"] for r in part if r["backend"] == backend and str(r["batch"]) == b), np.nan)
            for b in batches
        ]
        ax.bar(np.arange(len(batches)) + (k - (len(backends) - 1) / 2) * width, seconds, width, label=backend)
    ax.set_yscale("log")
    ax.set_xticks(range(len(batches)), batches)
    ax.set_xlabel("batch size")
    ax.set_ylabel("seconds per epoch (log scale)")
    ax.set_title(f"{network}: one epoch, {env['dtype']}, {env['threads']} threads")
    ax.grid(alpha=0.3, axis="y", which="both")
    ax.legend(fontsize="small")
fig.tight_layout()

print(f"{'network':>8} {'batch':>6} {'backend':>15} {'s/epoch':>9} {'x numpy':>8} {'x best peer':>12}")
for r in rows:
    print(
        f"{r['network']:>8} {str(r['batch']):>6} {r['backend']:>15} {r['seconds']:9.4g} "
        f"{r['speedup_numpy'] or float('nan'):8.1f} {r['speedup_peer'] or float('nan'):12.1f}"
    )

# %%
# The compiled backends take the same time per epoch at every batch size — the
# sparse path at small batches, GEMMs at large ones where the inputs are dense —
# while the peers' time per epoch grows steeply as the batch shrinks: their cost
# is per call, fastmlp's per non-zero input. See :doc:`/performance` for how.
