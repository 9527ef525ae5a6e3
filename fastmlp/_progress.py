"""Progress on stderr for long loops: a tqdm bar where tqdm is installed, else one line
per step. Used by ``train(progress=True)`` (a step is an epoch) and
``sweep(progress=True)`` (a step is a trained model); updated between compiled
calls, never inside them."""

from __future__ import annotations

import sys


class Progress:
    """``with Progress(total, unit) as bar: ... bar.update(loss="0.12")``.

    ``initial`` counts steps already done (a resumed training). Each ``update``
    advances one step and shows the given statistics beside the bar. With
    ``enabled=False`` it shows nothing, so callers need no separate code path.
    """

    def __init__(self, total: int, unit: str, initial: int = 0, enabled: bool = True):
        self.total, self.unit, self.n, self.enabled = total, unit, initial, enabled
        self.bar = None
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            self.bar = None
        else:
            self.bar = tqdm(total=total, initial=initial, unit=unit, file=sys.stderr, dynamic_ncols=True)

    def update(self, **stats: str) -> None:
        if not self.enabled:
            return
        self.n += 1
        if self.bar is not None:
            if stats:
                self.bar.set_postfix(stats, refresh=False)
            self.bar.update(1)
        else:
            print(
                f"{self.unit} {self.n}/{self.total}  " + "  ".join(f"{k} {v}" for k, v in stats.items()),
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
