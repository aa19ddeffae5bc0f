#!/usr/bin/env python3
"""Backing up participants' outputs: backup_archive against the checklist's tar -czf, same data.

Makes a few GB of PNG/MP4-like incompressible outputs (as a workshop's are) and times, one after
the other on the same files, each from a cold page cache when the machine lets us drop it:
  - the checklist:   tar -czf outputs-backup.tar.gz data/outputs/
  - reading only:    tar -cf - data/outputs/ | cat > /dev/null   (the floor: every byte read once;
                     `> /dev/null` straight from tar is not used, GNU tar then skips reading)
  - backup_archive:  the module, run by ansible: stored tar + sha256 of every file + read-back check

    python bench/backup_speed.py [--gigabytes 3] [--workdir /var/tmp/comfy-wrapup-bench]
"""

import argparse
import json
import os
import shutil
import subprocess
from pathlib import Path

from benchlib import REPO, make_outputs, timed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gigabytes", type=float, default=3.0)
    parser.add_argument("--workdir", default="/var/tmp/comfy-wrapup-bench")
    args = parser.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    outputs = work / "data" / "outputs"
    make_outputs(outputs, int(args.gigabytes * 1024))
    size = sum(p.stat().st_size for p in outputs.rglob("*") if p.is_file())
    files = sum(1 for p in outputs.rglob("*") if p.is_file())
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_CALLBACK_RESULT_FORMAT": "json"}
    module_args = json.dumps({"dest": str(work / "outputs.tar"), "sources": {"outputs": str(outputs)}})
    contenders = [
        ("checklist: tar -czf", ["tar", "-czf", str(work / "outputs-backup.tar.gz"), "-C", str(work), "data/outputs/"], {}),
        ("reading only: tar -cf - | cat", ["sh", "-c", f"tar -cf - -C {work} data/outputs/ | cat > /dev/null"], {}),
        (
            "backup_archive (ansible)",
            [
                "ansible",
                "localhost",
                "-c",
                "local",
                "-i",
                "localhost,",
                "-e",
                "ansible_python_interpreter=" + str(REPO / ".venv/bin/python"),
                "-m",
                "backup_archive",
                "-a",
                module_args,
            ],
            {"cwd": REPO, "env": env, "stdout": subprocess.DEVNULL},
        ),
    ]
    print(f"{files} files, {size / 2**30:.2f} GiB of incompressible PNG/MP4-like outputs")
    print(f"{'contender':<32} {'seconds':>8} {'MiB/s':>8} {'output MiB':>11}  cache")
    for name, command, kwargs in contenders:
        seconds, cold = timed(command, **kwargs)
        produced = {"checklist: tar -czf": work / "outputs-backup.tar.gz", "backup_archive (ansible)": work / "outputs.tar"}.get(
            name
        )
        out_mib = f"{produced.stat().st_size / 2**20:.0f}" if produced else "-"
        print(f"{name:<32} {seconds:>8.1f} {size / 2**20 / seconds:>8.0f} {out_mib:>11}  {'cold' if cold else 'warm'}")
    print("backup_archive also hashes every file (sha256 manifest) and reads the archive back to verify it.")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
