"""Keep freed memory inside the process instead of handing it back to the OS (glibc malloc, i.e. Linux).

A training step allocates and frees the same few hundred MB of activations every time. glibc by default gives large
freed blocks back to the OS (each block over its mmap threshold has a mapping of its own, unmapped on free; the top
of the heap is trimmed), so the next step takes a page fault on every 4 KiB page it touches again: about 2.4 us each
on the 2-core VM this was measured on. Seed model (dim 64) at 5x32x32, batch 2: 50k-140k faults a step; at
8x64x64: 1.3 M faults, about 3 s of an 8 s step. With the three settings below the same steps take no faults after
the first: the 8x64x64 step ran in 5.3 s instead of 8.0-9.2 s, the quickstart model's in 523 ms instead of 635
(peak RSS +10%, which the process keeps until it exits: the right trade for a training or sampling job, not for a
library import, so only the pipeline entry points call this).

Opt out with `T2V_KEEP_FREED_MEMORY=0`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt(3) parameter numbers from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4

_applied = False


def keep_freed_memory() -> bool:
    """Tune glibc malloc so freed memory is reused, not returned to the OS. Returns True if the settings are in
    effect (now or from an earlier call), False where they do not apply (not glibc, or opted out)."""
    global _applied
    if _applied:
        return True
    if os.environ.get("T2V_KEEP_FREED_MEMORY", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # only glibc has it (musl's mallopt is a no-op)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = all((
        mallopt(M_MMAP_THRESHOLD, 32 << 20),  # the largest allowed; also stops glibc adapting it
        mallopt(M_MMAP_MAX, 0),  # no block gets a mapping of its own: all come from the heap and return to it
        mallopt(M_TRIM_THRESHOLD, 2**31 - 1),  # never shrink the heap
    ))
    return _applied
