"""PyTorch's matmul on this GPU, the reference for `npm run bench -- gemm --device cuda` (run by tools/gpu-check.sh
where python3 has torch with CUDA): TFLOP/s (2·n³ per product) of torch.matmul at n = 4096 and 8192 in bf16 and in
f32 (TF32 off, the same arithmetic as our f32 GEMM), random normal operands, the median of 10 products timed one by
one with CUDA events after 3 warm-ups.

    python3 tools/torch_gemm.py [OUT.json]
"""
import json
import statistics
import sys

import torch


def main() -> None:
    if not torch.cuda.is_available():
        print("torch_gemm: skipped, torch sees no CUDA device")
        return
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.cuda.get_device_name(0)
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        for n in (4096, 8192):
            g = torch.Generator(device="cuda").manual_seed(1)
            a = torch.randn(n, n, device="cuda", dtype=dtype, generator=g)
            b = torch.randn(n, n, device="cuda", dtype=dtype, generator=g)
            for _ in range(3):
                torch.matmul(a, b)
            ms = []
            for _ in range(10):
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                torch.matmul(a, b)
                e.record()
                e.synchronize()
                ms.append(s.elapsed_time(e))
            med = statistics.median(ms)
            rows.append({"dtype": str(dtype).replace("torch.", ""), "n": n, "ms": med, "tflops": 2 * n**3 / (med * 1e-3) / 1e12})
            del a, b
    print(f"\nPyTorch {torch.__version__} matmul on {dev} (median of 10, CUDA events; f32 without TF32)")
    print(f"{'dtype':>9} {'n':>6} {'ms':>9} {'TFLOP/s':>9}")
    for r in rows:
        print(f"{r['dtype']:>9} {r['n']:>6} {r['ms']:>9.3f} {r['tflops']:>9.1f}")
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            json.dump({"device": dev, "torch": torch.__version__, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
