"""Giving freed heap memory back to the system: glibc keeps what a thread frees in that
thread's arena, so a model parsed at load, or released at unload, left the process larger
(on MiniLM, a second session's load +80 MB; an unloaded model most of its size)."""

from __future__ import annotations

import ctypes


def return_freed_memory() -> None:
    """Hand the heap's free pages back to the system (glibc's malloc_trim); elsewhere a no-op."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to do
        return
    libc.malloc_trim(0)
