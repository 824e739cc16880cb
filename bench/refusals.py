"""How long ``qllm`` takes to refuse bad input, each case of the refusal table
(``tests/test_refusals.py``) as a command of its own, as a user meets it:

    python bench/refusals.py [--repeat 3]

Prints each case's wall time (the median of ``--repeat`` runs: the interpreter's start, the
imports and the checks), whether its checks need heavy libraries (the table's ``NEEDS_HEAVY``),
the slowest light refusal and ``qllm --help``, and the machine's load average before and after,
since two busy cores slow every import several times over.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.test_refusals import CASES, NEEDS_HEAVY, write_bad_data  # noqa: E402  (the table, not a copy)


def seconds(argv: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Wall time and exit code of ``python -m flows.cli argv``."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", *argv],
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        cwd=ROOT,
    )
    return time.perf_counter() - t0, proc.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3, help="runs per case (the median is shown)")
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    rows: list[tuple[str, bool, float, int]] = []
    with tempfile.TemporaryDirectory() as tmp:
        data = write_bad_data(Path(tmp))
        cases = [("help", ["--help"], {}), ("run distill --help", ["run", "distill", "--help"], {})]
        cases += [(n, argv, env) for n, argv, env, _ in CASES]
        for name, argv, env in cases:
            runs = []
            for i in range(args.repeat):
                root = {"QLLM_ARTIFACT_ROOT": f"{tmp}/{name}-{i}"}
                runs.append(
                    seconds(
                        [a.format(data=data) for a in argv],
                        {**root, **{k: v.format(data=data) for k, v in env.items()}},
                    )
                )
            rows.append((name, name in NEEDS_HEAVY, statistics.median(t for t, _ in runs), runs[0][1]))
    print("| case | needs heavy libraries | seconds (median) | exit code |\n|---|---|---|---|")
    for name, heavy, t, code in rows:
        print(f"| {name} | {'yes' if heavy else 'no'} | {t:.2f} | {code} |")
    light = [r for r in rows if not r[1]]
    name, _, slowest, _ = max(light, key=lambda r: r[2])
    print(f"\n{len(rows) - 2} refusals, {len(light) - 2} of them light; slowest light command: {name} {slowest:.2f} s")
    if needs_heavy := [r for r in rows if r[1]]:
        name, _, slowest, _ = max(needs_heavy, key=lambda r: r[2])
        print(f"slowest refusal that needs heavy libraries: {name} {slowest:.2f} s")
    print(f"1-minute load average: {load_before:.2f} before, {os.getloadavg()[0]:.2f} after, on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
