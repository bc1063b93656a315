"""Memory for the weights a decode step reads whole, in 2 MiB pages where the system gives them.

Decoding one token streams every matrix from memory once. With 4 KiB pages that is a TLB miss every
4 KiB (SmolLM2-135M: ~30,000 per token), each a page walk that a hardware prefetcher does not run
ahead of; in a virtual machine each walk also goes through the host's tables. Linux backs private
anonymous memory with 2 MiB pages ("transparent huge pages") when it is asked to (madvise
MADV_HUGEPAGE; the default setting `madvise` gives them to nobody else): one TLB entry then covers
512 times as much. SmolLM2 decodes ~15 % faster with its repacked matrices and its head there
(docs/performance.md).

An Arena hands out 64-byte-aligned arrays from chunks of such memory, filled by copying: keep(a)
returns a's copy. Where there are no huge pages (another OS, THP off) the chunks are ordinary pages:
the same bytes, the same speed as before.
"""

import mmap

import numpy as np

HUGE = 2 << 20       # the huge page size on x86-64 and (with 4 KiB base pages) arm64 Linux
CHUNK = 64 << 20     # bytes per chunk (a bigger array gets a chunk of its own)
ALIGN = 64           # every array starts on a cache line
STEP = 16 << 20      # bytes keep() copies between two calls of its copied()


class Arena:
    def __init__(self):
        self._free = np.empty(0, dtype=np.uint8)   # what is left of the newest chunk

    def empty(self, shape, dtype):
        """An array of `shape` and `dtype` in the arena, its bytes not set (a caller fills it in parts)."""
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if len(self._free) < n:
            self._free = _chunk(max(n, CHUNK))
        dst = self._free[:n]
        self._free = self._free[-(-n // ALIGN) * ALIGN:]
        return dst.view(dtype).reshape(shape)

    def keep(self, a, copied=None):
        """A copy of the array `a` in the arena (same dtype, shape and bytes). copied(), if given, is
        called after each STEP bytes are copied: a caller can give the source's pages back as it goes
        (a file's mapped pages would otherwise all be resident beside the copy at the end)."""
        a = np.ascontiguousarray(a)
        out = self.empty(a.shape, a.dtype)
        dst, src = out.reshape(-1).view(np.uint8), a.reshape(-1).view(np.uint8)
        for i in range(0, a.nbytes, STEP):
            dst[i:i + STEP] = src[i:i + STEP]
            if copied is not None:
                copied()
        return out


def _chunk(n):
    """uint8 [>= n] starting on a HUGE boundary, in private memory marked for huge pages where the OS
    has them; an ordinary array where it has no private anonymous mappings (Windows)."""
    if not hasattr(mmap, "MAP_PRIVATE"):
        raw = np.empty(n + ALIGN, dtype=np.uint8)
        return raw[-raw.ctypes.data % ALIGN:][:n]
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0)
    buf = mmap.mmap(-1, n + HUGE, flags=flags)   # the views below keep it alive
    raw = np.frombuffer(buf, dtype=np.uint8)
    start = -raw.ctypes.data % HUGE
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            buf.madvise(mmap.MADV_HUGEPAGE, start, n)
        except OSError:   # THP compiled out: ordinary pages
            pass
    return raw[start:start + n]
