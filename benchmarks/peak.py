"""The machine's fp32 peak as numpy's SGEMM reaches it, on a fixed number of threads.

Runs in a child process so the BLAS thread count is set before numpy loads. The best of
several 4096^3 products is taken: a peak is what the hardware can do, not what it usually does.
OpenBLAS settings that pin an older kernel (OPENBLAS_CORETYPE=Haswell caps this AVX-512 CPU at
about half its SGEMM rate) are dropped: ONNX Runtime picks its kernels from the CPU itself, so
the peak it is compared with must too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
KERNEL_PINS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def measure_peak(threads: int = 2, size: int = 4096, repeats: int = 6) -> float:
    """FLOP/s of numpy float32 matrix multiplication, best of `repeats`."""
    env = {key: value for key, value in os.environ.items() if key not in KERNEL_PINS}
    env.update(dict.fromkeys(THREAD_VARIABLES, str(threads)))
    command = [sys.executable, __file__, str(size), str(repeats)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True, timeout=300)
    return float(done.stdout.strip())


def _child(size: int, repeats: int) -> float:
    import numpy as np

    generator = np.random.default_rng(0)
    left = generator.random((size, size), dtype=np.float32)
    right = generator.random((size, size), dtype=np.float32)
    left @ right  # warm-up: threads, page faults
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        left @ right
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


if __name__ == "__main__":
    print(_child(int(sys.argv[1]), int(sys.argv[2])))
