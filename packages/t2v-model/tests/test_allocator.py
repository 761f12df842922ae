"""keep_freed_memory: after it, re-allocating a freed block costs no page faults (glibc only)."""

import os
import subprocess
import sys

import pytest

PROBE = r"""
import resource, sys
import torch
from t2v_model.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
faults = []
for _ in range(24):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(16 << 20)  # 64 MiB: above any mmap threshold glibc would pick by itself
    x.fill_(1.0)
    del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
# steady state: the first rounds grow the heap, as small allocations land between the big blocks and the one just
# freed does not always fit the next (measured: the last faulting round was one of the first 9, in 8 runs of 30)
print(int(applied), sum(faults[-6:]))
"""


def probe(mode: str, **env) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, "T2V_KEEP_FREED_MEMORY": "1", **env})
    applied, faults = out.stdout.split()
    return applied == "1", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_freed_memory_is_reused_without_page_faults():
    applied, faults_kept = probe("keep")
    if not applied:
        pytest.skip("not glibc malloc")
    _, faults_default = probe("default")
    pages = 6 * (64 << 20) // 4096  # six re-allocations of 64 MiB
    if faults_default < pages // 2:  # glibc maps and unmaps the block every time: normally a fault per 4 KiB page
        pytest.skip(f"{faults_default} faults for {pages} pages: transparent huge pages (THP=always) hide them")
    assert faults_kept < pages // 20  # kept: the pages are already there


def test_opt_out():
    applied, _ = probe("keep", T2V_KEEP_FREED_MEMORY="0")
    assert not applied
