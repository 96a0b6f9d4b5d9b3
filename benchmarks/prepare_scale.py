"""`lmlab prepare --workers N` on a multi-GB text: throughput against one worker, peak memory, identical output.

The input is the shared corpora (Tiny Shakespeare, Multi30k, WikiText-2, rt-polarity) concatenated over and
over into one temporary file of --gb gigabytes (deleted at the end). Each configuration runs the real
`lmlab prepare` command; a sampler reads /proc every 50 ms for the peak RSS of the main process, the peak
sum of RSS over it and its workers, and the peak sum of their PSS (shared pages counted once). Usage:

    .venv/bin/python benchmarks/prepare_scale.py --gb 1 --workers 2 4
    .venv/bin/python benchmarks/prepare_scale.py --gb 1 --tokenizer bpe   # encode with a BPE trained beforehand

Tokenizers: char (both passes: the vocabulary pass and the encode pass run on the workers) or bpe (a 4096-token
BPE learned from the shared corpora once, then reused: the encode pass alone).
"""
from __future__ import annotations

import argparse
import filecmp
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
LMLAB = [str(Path(sys.executable).with_name("lmlab"))]
CORPORA = ["tinyshakespeare/input.txt", "multi30k/train.en", "multi30k/train.de", "wikitext-2/valid.txt",
           "wikitext-2/test.txt", "rt-polarity/rt-polarity.pos", "rt-polarity/rt-polarity.neg"]


def build_input(path: Path, gigabytes: float) -> int:
    """Concatenate the corpora (each ending in a newline) until the file holds `gigabytes` GB."""
    parts = []
    for name in CORPORA:
        data = (SHARED / name).read_bytes()
        parts.append(data if data.endswith(b"\n") else data + b"\n")
    block = b"".join(parts)
    target = int(gigabytes * 1e9)
    with open(path, "wb") as f:
        written = 0
        while written < target:
            f.write(block)
            written += len(block)
    return written


def _proc_kb(pid: int, file: str, field: str) -> int:
    """A `field: N kB` line of /proc/PID/FILE (0 once the process is gone)."""
    try:
        with open(f"/proc/{pid}/{file}") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _rss_kb(pid: int) -> int:
    return _proc_kb(pid, "status", "VmRSS")


def _pss_kb(pid: int) -> int:
    """Proportional set size: shared pages (the forked workers share the parent's libraries) counted once."""
    return _proc_kb(pid, "smaps_rollup", "Pss")


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def run(cmd: list[str]) -> dict:
    """Run cmd; wall seconds, peak RSS of the process and peak total RSS of it and its children (MiB)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_main, peak_total, peak_pss, done = 0, 0, 0, threading.Event()

    def sample():
        nonlocal peak_main, peak_total, peak_pss
        while not done.is_set():
            pids = [proc.pid, *_children(proc.pid)]
            main = _rss_kb(proc.pid)
            total = main + sum(_rss_kb(c) for c in pids[1:])
            pss = sum(_pss_kb(p) for p in pids)
            peak_main, peak_total, peak_pss = max(peak_main, main), max(peak_total, total), max(peak_pss, pss)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the command and its (waited-for) workers
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    done.set()
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err}")
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_main_mib": peak_main / 1024, "peak_total_mib": peak_total / 1024,
            "peak_pss_mib": peak_pss / 1024}


def same_output(a: Path, b: Path) -> bool:
    return all(filecmp.cmp(a / n, b / n, shallow=False) for n in ("train.bin", "val.bin", "meta.json", "tokenizer.json"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=1.0, help="size of the generated text (GB)")
    parser.add_argument("--workers", type=int, nargs="+", default=[2], help="worker counts to compare with 1")
    parser.add_argument("--tokenizer", choices=["char", "bpe"], default="char")
    parser.add_argument("--tmp", default=None, help="directory for the input and outputs (default: system temp)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="lmlab-prepare-bench-", dir=args.tmp))
    try:
        big = work / "big.txt"
        size = build_input(big, args.gb)
        tokenizer = args.tokenizer
        if tokenizer == "bpe":  # learned once from the corpora themselves, then every run only encodes
            small = work / "corpora"
            small.mkdir()
            for name in CORPORA:
                shutil.copy(SHARED / name, small / name.replace("/", "-"))
            subprocess.run([*LMLAB, "prepare", str(small), "--tokenizer", "bpe", "--vocab-size", "4096",
                            "--out", str(work / "bpe"), "--quiet"], check=True)
            tokenizer = str(work / "bpe" / "tokenizer.json")
        with open("/proc/loadavg") as f:
            load = f.read().split()[0]
        print(f"load average before: {load} (other processes share these cores)")
        print(f"input: {size / 1e9:.2f} GB ({size / 2**30:.2f} GiB) of the shared corpora repeated; "
              f"tokenizer {args.tokenizer}; {os.cpu_count()} CPU cores")
        results = {}
        for n in [1, *args.workers]:
            out = work / f"out{n}"
            results[n] = run([*LMLAB, "prepare", str(big), "--tokenizer", tokenizer, "--out", str(out),
                              "--workers", str(n), "--quiet"])
            r = results[n]
            same = "reference" if n == 1 else ("identical" if same_output(work / "out1", out) else "DIFFERENT")
            print(f"workers {n}: {r['seconds']:7.1f} s  {size / 1e6 / r['seconds']:6.1f} MB/s  "
                  f"x{results[1]['seconds'] / r['seconds']:.2f}  CPU {r['cpu_seconds']:6.1f} s "
                  f"({size / 1e6 / r['cpu_seconds']:5.1f} MB per CPU-s)  peak RSS main {r['peak_main_mib']:5.0f} MiB, "
                  f"sum over processes {r['peak_total_mib']:5.0f} MiB (PSS {r['peak_pss_mib']:4.0f} MiB)  "
                  f"output {same}", flush=True)
            if n != 1:
                shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
