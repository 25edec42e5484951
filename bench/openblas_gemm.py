"""OpenBLAS side of `npm run bench -- gemm --openblas`: the same f32 shapes through numpy's matmul (OpenBLAS sgemm).

Reads JSON from stdin: {"shapes": [{"M":..,"K":..,"N":..,"ta":bool,"tb":bool}, ...], "min_seconds": s}; the thread
count comes from OPENBLAS_NUM_THREADS, set by the caller before numpy loads. Prints JSON: the BLAS name and version
and, per shape, the median and p10 GFLOP/s of 2·M·N·K per call. Transposed operands are views (no copies), so
sgemm sees the same transpose flags as our gemm.
"""
import json
import statistics
import sys
import time

import numpy as np


def blas_name() -> str:
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # older numpy: no dict mode
        return "numpy BLAS"


def bench(shape: dict, min_seconds: float) -> dict:
    m, k, n = shape["M"], shape["K"], shape["N"]
    rng = np.random.default_rng(1)
    a = rng.standard_normal((k, m) if shape.get("ta") else (m, k), dtype=np.float32)
    b = rng.standard_normal((n, k) if shape.get("tb") else (k, n), dtype=np.float32)
    a = a.T if shape.get("ta") else a
    b = b.T if shape.get("tb") else b
    c = np.empty((m, n), dtype=np.float32)
    np.matmul(a, b, out=c)  # warm-up (thread start, page faults)
    times = []
    start = time.perf_counter()
    while len(times) < 5 or (time.perf_counter() - start < min_seconds and len(times) < 50):
        t0 = time.perf_counter()
        np.matmul(a, b, out=c)
        times.append(time.perf_counter() - t0)
    flops = 2.0 * m * n * k
    times.sort()
    return {
        "gflops": flops / statistics.median(times) / 1e9,
        "gflopsP10": flops / times[len(times) // 10] / 1e9,
        "runs": len(times),
    }


def main() -> None:
    req = json.load(sys.stdin)
    out = {"blas": blas_name(), "results": [bench(s, req.get("min_seconds", 0.4)) for s in req["shapes"]]}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
