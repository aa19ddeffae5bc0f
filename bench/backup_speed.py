#!/usr/bin/env python3
"""Backing up participants' outputs: backup_archive against a plain `tar -cf` copy of the same outputs.

Makes a few GB of PNG/MP4-like incompressible outputs (as a workshop's are), then times, side by
side on the same files, alternated, --rounds times, each from a cold page cache (medians reported):
  - plain copy:              tar -cf outputs.tar data/outputs/   (reads and writes every byte once)
  - the same copy on disk:   tar -cf, then sync outputs.tar      (what tar -cf leaves for the kernel to write)
  - backup_archive, now:     the module, run by ansible: stored tar + sha256 of every file while it is
                             written + the read-back check of every member, from disk (not the page cache)
  - backup_archive, before:  the same module as of --baseline (the commit before the speed work)
and, with --with-gzip, the checklist's own `tar -czf` once. The speed target (issue 14): backup_archive
at most 1.5x the plain copy, hashing and verification kept.

    python bench/backup_speed.py [--gigabytes 2] [--rounds 3] [--workdir /var/tmp/comfy-wrapup-bench] [--json out.json]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from benchlib import REPO, ad_hoc_module, make_outputs, timed

BASELINE = "8314252"


def module_command(work, outputs):
    return ad_hoc_module("backup_archive", {"dest": str(work / "outputs.tar"), "sources": {"outputs": str(outputs)}})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gigabytes", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", default=BASELINE)
    parser.add_argument("--with-gzip", action="store_true", help="also time the checklist's tar -czf (once)")
    parser.add_argument("--workdir", default="/var/tmp/comfy-wrapup-bench")
    parser.add_argument("--json", help="write the medians here (for make bench's table)")
    args = parser.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    outputs = work / "data" / "outputs"
    make_outputs(outputs, int(args.gigabytes * 1024))
    size = sum(p.stat().st_size for p in outputs.rglob("*") if p.is_file())
    files = sum(1 for p in outputs.rglob("*") if p.is_file())
    old = Path(tempfile.mkdtemp(prefix="comfy-wrapup-baseline-"))
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", args.baseline, "library", "module_utils"], check=True, capture_output=True
    )
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")}
    quiet = {"cwd": REPO, "stdout": subprocess.DEVNULL}
    contenders = [
        ("plain copy: tar -cf", ["tar", "-cf", str(work / "outputs.tar"), "-C", str(work), "data/outputs/"], {}),
        # The same copy waited for until it is on the disk (sync FILE fsyncs it), as a backup must be.
        (
            "on disk: tar -cf; sync",
            ["sh", "-c", 'tar -cf "$1" -C "$2" data/outputs/ && sync "$1"', "sh", str(work / "outputs.tar"), str(work)],
            {},
        ),
        ("backup_archive, now", module_command(work, outputs), {**quiet, "env": env}),
        (
            f"backup_archive, before ({args.baseline})",
            module_command(work, outputs),
            {**quiet, "env": {**env, "ANSIBLE_LIBRARY": str(old / "library"), "ANSIBLE_MODULE_UTILS": str(old / "module_utils")}},
        ),
    ]
    runs = {name: [] for name, _command, _kwargs in contenders}
    cold = True
    try:
        for number in range(args.rounds):
            for name, command, kwargs in contenders if number % 2 == 0 else contenders[::-1]:
                for leftover in work.glob("outputs.tar*"):
                    leftover.unlink()
                seconds, was_cold = timed(command, **kwargs)
                cold = cold and was_cold
                runs[name].append(seconds)
        if args.with_gzip:
            seconds, _cold = timed(["tar", "-czf", str(work / "outputs-backup.tar.gz"), "-C", str(work), "data/outputs/"])
            runs["checklist: tar -czf"] = [seconds]
    finally:
        shutil.rmtree(old, ignore_errors=True)
    medians = {name: statistics.median(values) for name, values in runs.items()}
    copy = medians["plain copy: tar -cf"]
    print(f"{files} files, {size / 2**30:.2f} GiB of incompressible PNG/MP4-like outputs; {'cold' if cold else 'WARM'} cache")
    print(f"medians of {args.rounds} alternated runs on a shared machine (load: {os.getloadavg()[0]:.1f})")
    print(f"{'contender':<34} {'seconds':>8} {'MiB/s':>8} {'x copy':>7}  runs")
    for name, seconds in medians.items():
        spread = ", ".join(f"{value:.1f}" for value in runs[name])
        print(f"{name:<34} {seconds:>8.1f} {size / 2**20 / seconds:>8.0f} {seconds / copy:>7.2f}  {spread}")
    print("backup_archive hashes every file (sha256 manifest) as it writes, then reads the archive back from disk to verify it.")
    if args.json:
        Path(args.json).write_text(json.dumps({"medians": medians, "runs": runs, "bytes": size, "cold": cold}, indent=1) + "\n")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
