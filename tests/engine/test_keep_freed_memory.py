"""``launch.keep_freed_memory``: after a large tensor is freed, the next one of its size reuses
the same pages instead of faulting fresh zeroed ones in (glibc; the default on Linux)."""
import platform
import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
if sys.argv[1] == "1":
    from rltrain.launch import keep_freed_memory
    assert keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):  # a step's pattern: allocate, touch, free; the last round is measured
    before = faults()
    x = torch.ones(64 << 20)  # 256 MB
    del x
print(faults() - before)
"""


def _repeat_alloc_faults(tuned: bool) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, "1" if tuned else "0"], capture_output=True, text=True,
                         check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(platform.system() != "Linux" or not platform.libc_ver()[0] == "glibc",
                    reason="glibc malloc settings; other libcs keep their own policy")
def test_freed_tensor_pages_are_reused_not_faulted_again():
    pages = (256 << 20) // 4096
    assert _repeat_alloc_faults(False) > pages // 2  # glibc's default: unmapped on free, faulted again
    assert _repeat_alloc_faults(True) < pages // 50
