"""Teacher inference against bare sentence-transformers, and the cache, measured in one process.

    python bench/teacher.py [--texts 2000] [--batch-size 64] [--threads N]

Prints texts/s of `SentenceTransformer.encode` and of the probe teacher's encoder on the same
SST-2 training sentences, model and batch size (best of 3 each, alternating), their ratio
(target >= 0.90), and the time of a first (inference) and second (cache hit) call of
`cached_teacher_outputs` (target: second call >= 20x faster).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from sentence_transformers import SentenceTransformer

    from lab.data import load_dataset
    from lab.teacher import SentenceEncoder, TeacherSpec, cached_teacher_outputs, device_for, resolve_model

    data = load_dataset("sst2", train_size=args.texts, test_size=200, seed=0)
    texts = data.train_texts
    folder = resolve_model(None)
    bare = SentenceTransformer(str(folder), device="cpu")
    spec = TeacherSpec(batch_size=args.batch_size)
    ours = SentenceEncoder(spec, folder, device_for(spec))
    bare.encode(texts[:64], batch_size=args.batch_size)
    ours.encode(texts[:64])
    best = {"sentence-transformers": float("inf"), "qllm probe": float("inf")}
    for _ in range(3):
        t = time.perf_counter()
        bare.encode(texts, batch_size=args.batch_size)
        best["sentence-transformers"] = min(best["sentence-transformers"], time.perf_counter() - t)
        t = time.perf_counter()
        ours.encode(texts)
        best["qllm probe"] = min(best["qllm probe"], time.perf_counter() - t)
    print(f"{len(texts)} SST-2 sentences, batch {args.batch_size}, {args.threads} thread(s)")
    for name, sec in best.items():
        print(f"  {name:22s} {len(texts) / sec:8.1f} texts/s  ({sec:.2f} s)")
    ratio = best["sentence-transformers"] / best["qllm probe"]
    print(f"  throughput ratio probe / bare: {ratio:.2f}  (target >= 0.90: {'met' if ratio >= 0.9 else 'MISSED'})")

    with tempfile.TemporaryDirectory() as root:
        t = time.perf_counter()
        cached_teacher_outputs(data, spec, root, progress=False)
        first = time.perf_counter() - t
        t = time.perf_counter()
        cached_teacher_outputs(data, spec, root, progress=False)
        second = time.perf_counter() - t
    print(
        f"cache: first call {first:.2f} s, second call {second:.3f} s, {first / second:.0f}x faster "
        f"(target >= 20x: {'met' if first / second >= 20 else 'MISSED'})"
    )


if __name__ == "__main__":
    main()
