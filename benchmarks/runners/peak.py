"""fp32 matmul peak of this machine at N threads: best of R timed ``torch.mm`` of two n x n
matrices (after warm-up), FLOPs = 2 n^3. Prints one JSON line."""

from __future__ import annotations

import argparse
import json
import os
import time

ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--n", type=int, default=2048)
ap.add_argument("--repeats", type=int, default=10)
args = ap.parse_args()
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = str(args.threads)
import torch  # noqa: E402

torch.set_num_threads(args.threads)
a = torch.randn(args.n, args.n)
b = torch.randn(args.n, args.n)
for _ in range(3):
    torch.mm(a, b)
times = []
for _ in range(args.repeats):
    t0 = time.perf_counter()
    torch.mm(a, b)
    times.append(time.perf_counter() - t0)
flops = 2 * args.n**3
print(
    json.dumps(
        {
            "n": args.n,
            "threads": args.threads,
            "best_s": min(times),
            "median_s": sorted(times)[len(times) // 2],
            "gflops_best": flops / min(times) / 1e9,
            "gflops_median": flops / sorted(times)[len(times) // 2] / 1e9,
            "loadavg": os.getloadavg()[0],
        }
    )
)
