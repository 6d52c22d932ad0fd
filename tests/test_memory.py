"""keep_freed_memory: large blocks come from the process's heap, which glibc keeps, instead of fresh mappings."""
import platform

import pytest
import torch

from lightdet.memory import keep_freed_memory


def heap():
    """The (start, end) addresses of the process's heap, from /proc/self/maps."""
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith("[heap]"):
            start, end = line.split()[0].split("-")
            return int(start, 16), int(end, 16)
    raise AssertionError("no [heap] in /proc/self/maps")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_a_large_block_comes_from_the_heap():
    assert keep_freed_memory()
    block = torch.ones(16 * 2**20)   # 64 MiB: glibc maps any block above 32 MiB afresh by default, and unmaps it
    start, end = heap()
    assert start <= block.data_ptr() < end
