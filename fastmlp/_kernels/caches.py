"""The CPU's data caches per core, and the sparse path's block of examples they set;
the CPU's model and widest vector extension (``cpu_description``).

The sparse path's grouped update (``_sparse_impl.h`` ``fm_grouped_rows``) walks
the inputs once per group of hidden units and, for each input, sums the rows of
dl/dh~ of the examples that touch it: the group's slice of dl/dh~ for the whole
block of examples is read again for every input, so it must stay in L1. A block
of ``rows`` examples holds ``rows * group_bytes`` of it (four cache lines of
units per group: 256 bytes). Larger batches are taken that many examples at a
time, their gradient summed (``epochs.sparse_work``).

The sizes come from the operating system (Linux sysfs, ``sysconf``, macOS
``sysctl``); ``FASTMLP_L1D_CACHE`` and ``FASTMLP_L2_CACHE`` override them (bytes,
or a number with K / M: ``32K``, ``512K``), for tests and for machines that
misreport. Where nothing is reported, the small caches of common AVX2 CPUs are
assumed (32 KiB, 512 KiB), which only makes blocks smaller.

The block is part of the arithmetic (a batch's gradient is summed block by
block), so results are bitwise reproducible for a build level and a pair of
cache sizes: pin the sizes with the variables to reproduce a run on another CPU.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import re
import sys
from pathlib import Path
from typing import NamedTuple

L1D_VAR, L2_VAR = "FASTMLP_L1D_CACHE", "FASTMLP_L2_CACHE"
DEFAULT_L1D, DEFAULT_L2 = 32 << 10, 512 << 10  # AMD Zen 2/3, most Intel client cores
L1D_SHARE = 2 / 3  # of L1d for a group's slice of dl/dh~; the rest for the rows of WhT streamed past it


class Caches(NamedTuple):
    l1d: int  # bytes of L1 data cache per core
    l2: int  # bytes of L2 per core
    source: str  # where the sizes came from


def parse_size(text, name):
    """Bytes in ``text`` ("49152", "48K", "48KiB", "1M"); ValueError naming ``name``
    where it is not a positive size."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)(?:I?B)?\s*", str(text), re.IGNORECASE)
    if not m or int(m.group(1)) <= 0:
        raise ValueError(f"{name} must be a positive size in bytes, or with K or M (e.g. 32K, 512K), got {text!r}")
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2).upper()]


def _sysfs(root="/sys/devices/system/cpu", cpus=None):
    """(L1d, L2) per core from Linux sysfs: the smallest over the CPUs this process
    may run on (``cpus``; hybrid CPUs have cores of two kinds), or None."""
    if cpus is None:
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    found = {}
    for cpu in cpus:
        for index in Path(root, f"cpu{cpu}", "cache").glob("index*"):
            try:
                level = int((index / "level").read_text())
                kind = (index / "type").read_text().strip()
                size = parse_size((index / "size").read_text(), str(index / "size"))
            except (OSError, ValueError):
                continue
            key = "l1d" if (level, kind) == (1, "Data") else "l2" if level == 2 and kind != "Instruction" else None
            if key:
                found[key] = min(size, found.get(key, size))
    return (found["l1d"], found["l2"]) if len(found) == 2 else None


def _sysconf():
    """(L1d, L2) from glibc's sysconf, or None where it does not know them."""
    try:
        l1d, l2 = os.sysconf("SC_LEVEL1_DCACHE_SIZE"), os.sysconf("SC_LEVEL2_CACHE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return (l1d, l2) if l1d > 0 and l2 > 0 else None


def _sysctl():
    """(L1d, L2) from macOS's sysctl (of the performance cores' level), or None."""
    if sys.platform != "darwin":
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c"))

    def read(name):
        value, size = ctypes.c_int64(0), ctypes.c_size_t(8)
        ok = libc.sysctlbyname(name.encode(), ctypes.byref(value), ctypes.byref(size), None, 0) == 0
        return value.value if ok and value.value > 0 else None

    l1d, l2 = read("hw.perflevel0.l1dcachesize") or read("hw.l1dcachesize"), read("hw.l2cachesize")
    return (l1d, l2) if l1d and l2 else None


@functools.cache
def _reported():
    """((L1d, L2), where they came from): what the operating system reports, read
    once per process, or the assumed sizes."""
    for name, read in (("Linux sysfs", _sysfs), ("sysconf", _sysconf), ("sysctl", _sysctl)):
        reported = read()
        if reported:
            return reported, name
    return (DEFAULT_L1D, DEFAULT_L2), "not reported; assumed"


def caches():
    """The L1d and L2 sizes per core the kernels' blocks are derived from, and where
    they came from: the operating system's (read once per process), or the
    variables' where set (read at each call)."""
    (l1d, l2), source = _reported()
    overridden = []
    if os.environ.get(L1D_VAR, "").strip():
        l1d = parse_size(os.environ[L1D_VAR], L1D_VAR)
        overridden.append(L1D_VAR)
    if os.environ.get(L2_VAR, "").strip():
        l2 = parse_size(os.environ[L2_VAR], L2_VAR)
        overridden.append(L2_VAR)
    if len(overridden) == 1:
        source = f"{overridden[0]}; the other from {source}"
    elif overridden:
        source = " and ".join(overridden)
    return Caches(int(l1d), int(l2), source)


def block_rows(group_bytes, least, most, l1d=None):
    """Examples per block of the sparse path's grouped update: the largest power of
    two from ``least`` to ``most`` whose ``rows * group_bytes`` slice of dl/dh~ fits
    in L1D_SHARE of L1d (``l1d``, default: this CPU's); ``least`` where none does."""
    budget = L1D_SHARE * (caches().l1d if l1d is None else l1d)
    rows = least
    while rows * 2 <= most and rows * 2 * group_bytes <= budget:
        rows *= 2
    return rows


def kib(n):
    """``n`` bytes as "48 KiB" or "1 MiB"."""
    return f"{n >> 20} MiB" if n >= 1 << 20 and n % (1 << 20) == 0 else f"{n / 1024:g} KiB"


def describe():
    """One line: the sizes and where they came from."""
    c = caches()
    return f"L1d {kib(c.l1d)}, L2 {kib(c.l2)} per core ({c.source})"


def cpu_description():
    """(CPU model name, widest vector extension: "AVX-512", "AVX2", ... or the machine)."""
    import platform

    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() in ("flags", "Features"):
                    flags = set(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("asimd", "NEON"), ("sse2", "SSE2")):
        if flag in flags:
            return model, name
    return model, platform.machine()
