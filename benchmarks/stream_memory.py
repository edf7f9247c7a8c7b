"""Streaming memory: read a large JSONL file with ``loader.stream`` and record peak RSS growth.

    python benchmarks/stream_memory.py                 # 1 GB file (target: growth < 200 MB)
    python benchmarks/stream_memory.py --size-mb 100   # quicker

The file is generated (seeded chat records with 1-4 turns, some long) into a temporary folder,
then a fresh interpreter streams it, checking every record's format the way training would,
and reports VmHWM (peak RSS) minus the RSS measured right before streaming started. Results are
printed and written to benchmarks/results/stream_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
from sage_libs.sage_finetune import create_loader
from sage_libs.sage_finetune.data.formats import detect_format, to_conversation

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
loader = create_loader(sys.argv[2])
try:  # reset the peak-RSS counter so import-time peaks do not hide streaming growth
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
except OSError:
    pass
before = status("VmRSS:")
start = time.perf_counter()
n = chars = 0
for record in loader.stream(sys.argv[1]):
    detect_format(record)
    conv = to_conversation(record)
    chars += sum(len(m.content) for m in conv.messages)
    n += 1
elapsed = time.perf_counter() - start
print(json.dumps({"records": n, "chars": chars, "seconds": elapsed, "rss_before": before,
                  "peak_rss": status("VmHWM:"), "rss_after": status("VmRSS:")}))
"""

WORDS = ("the model learns to answer short questions about numbers cities words and days while tools "
         "return results that the assistant reads before it replies").split()


def make_file(path: Path, size_bytes: int, seed: int = 0) -> int:
    rng = random.Random(seed)
    written = n = 0
    with path.open("w", encoding="utf-8") as fh:
        while written < size_bytes:
            messages = []
            for _ in range(rng.randint(1, 4)):
                length = int(rng.paretovariate(1.5) * 20)  # heavy tail: a few very long turns
                messages.append({"role": "user", "content": " ".join(rng.choices(WORDS, k=min(length, 3000)))})
                messages.append({"role": "assistant", "content": " ".join(rng.choices(WORDS, k=rng.randint(3, 60)))})
            line = json.dumps({"messages": messages}) + "\n"
            fh.write(line)
            written += len(line)
            n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--loader", default="jsonl")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "stream_memory.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stream-bench-") as tmp:
        path = Path(tmp) / "big.jsonl"
        t0 = time.perf_counter()
        lines = make_file(path, args.size_mb * 1024 * 1024)
        gen_s = time.perf_counter() - t0
        size = path.stat().st_size
        proc = subprocess.run([sys.executable, "-c", CHILD, str(path), args.loader], capture_output=True, text=True,
                              env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        if proc.returncode != 0:
            sys.exit(proc.stderr)
        child = json.loads(proc.stdout.strip().splitlines()[-1])
    growth = child["peak_rss"] - child["rss_before"]
    result = {"file_bytes": size, "records": child["records"], "generate_s": round(gen_s, 1),
              "stream_s": round(child["seconds"], 1), "mb_per_s": round(size / 2**20 / child["seconds"], 1),
              "rss_before_mb": round(child["rss_before"] / 2**20, 1), "peak_rss_mb": round(child["peak_rss"] / 2**20, 1),
              "peak_rss_growth_mb": round(growth / 2**20, 1), "target_growth_mb": 200, "loader": args.loader}
    assert child["records"] == lines, (child["records"], lines)
    print(f"streamed {size / 2**20:.0f} MB ({lines} records) in {child['seconds']:.1f} s "
          f"({result['mb_per_s']} MB/s); peak RSS growth {result['peak_rss_growth_mb']} MB "
          f"(target < 200 MB): {'OK' if growth < 200 * 2**20 else 'OVER'}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
