"""How much the decoded-tensor cache saves: one pass over N JPEGs (decode + Resize(256) + CenterCrop(224)) versus
one pass over the same images read back from the cache's memory map.

    python benchmarks/decoded_tensor_cache.py [--n 400] [--size 500x375] [--workers 0]

Prints the seconds of each and their ratio, measured in one run on this machine. Nothing here is a test: the
numbers depend on the disk, the CPU and the JPEG sizes (ImageNet's average is about 500x375).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import DataLoader

from robustbench_zs.datasets import DATASETS
from robustbench_zs.datasets.cache import TensorCache
from robustbench_zs.datasets.files import FileImageDataset
from robustbench_zs.datasets.preprocess import PreprocessedDataset, resolve_preprocess


def one_pass(ds, workers: int) -> float:
    t0 = time.perf_counter()
    for _ in DataLoader(ds, batch_size=64, num_workers=workers):
        pass
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--size", default="500x375", help="WxH of the generated JPEGs")
    ap.add_argument("--workers", type=int, default=0)
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rng = np.random.default_rng(0)
        samples = []
        for i in range(args.n):
            path = root / f"img_{i:05d}.JPEG"
            Image.fromarray(rng.normal(128, 40, (h, w, 3)).clip(0, 255).astype(np.uint8)).save(path, quality=90)
            samples.append((path, i % 10))
        data = FileImageDataset(samples, [str(c) for c in range(10)], root)
        spec = DATASETS.get("imagenet")
        pre = resolve_preprocess("paper", spec)
        direct = one_pass(PreprocessedDataset(data, pre), args.workers)
        t0 = time.perf_counter()
        cached, _ = TensorCache(root / "cache").prepare(spec, "val", data, pre, np.arange(args.n), workers=args.workers)
        fill = time.perf_counter() - t0
        from_cache = one_pass(cached, 0)
    print(f"{args.n} JPEGs {w}x{h} -> 224x224, {args.workers} workers")
    print(f"  decode + resize per pass: {direct:.3f} s")
    print(f"  first fill of the cache:  {fill:.3f} s (once per dataset and preprocessing)")
    print(f"  pass from the cache:      {from_cache:.3f} s ({direct / from_cache:.1f}x faster)")


if __name__ == "__main__":
    main()
