"""keep_freed_memory: large blocks come from the heap, which glibc keeps, instead of mappings of their own."""
import ctypes
import ctypes.util
import platform

import pytest
import torch

from lightdet.memory import keep_freed_memory

GLIBC = platform.libc_ver()[0] == "glibc"


class MallInfo2(ctypes.Structure):
    """glibc's struct mallinfo2 (malloc.h); hblkhd: the bytes in blocks that have a mapping of their own."""
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def separately_mapped_bytes():
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.mallinfo2.restype = MallInfo2
    return libc.mallinfo2().hblkhd


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_a_large_block_gets_no_mapping_of_its_own():
    assert keep_freed_memory()
    before = separately_mapped_bytes()
    block = torch.ones(16 * 2**20)   # 64 MiB: by default glibc maps it on its own (+64 MiB) and unmaps it when freed
    assert separately_mapped_bytes() - before < 2**20
