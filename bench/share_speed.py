#!/usr/bin/env python3
"""Sharing outputs: share_archives (one AES-256 zip per participant) against the checklist's `zip -r -P`.

Makes a few GB of PNG/MP4-like incompressible outputs for 20 participants (as a workshop's are)
and times, one after the other on the same files, each from a cold page cache when the machine
lets us drop it:
  - the checklist:    zip -r -P password workshop-outputs.zip data/outputs/
                      (one zip of everyone's outputs, legacy ZipCrypto, everything deflated, the
                      password in the process list)
  - share_archives:   the module, run by ansible: one zip per participant with only their files,
                      AES-256, PNG/MP4 stored; sha256 of each archive; copied to the served folder.
                      Once with --jobs 1, once with the role's default (4 at once).

    python bench/share_speed.py [--gigabytes 3] [--workdir /var/tmp/comfy-wrapup-share-bench]
"""

import argparse
import json
import os
import resource
import secrets
import shutil
import subprocess
from pathlib import Path

from benchlib import REPO, make_outputs, timed

USERS = 20


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gigabytes", type=float, default=3.0)
    parser.add_argument("--workdir", default="/var/tmp/comfy-wrapup-share-bench")
    args = parser.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    outputs = work / "data" / "outputs"
    make_outputs(outputs, int(args.gigabytes * 1024), USERS)
    credentials = work / "USER_CREDENTIALS.txt"
    credentials.write_text("".join(f"user{n:03d}:{secrets.token_urlsafe(12)}\n" for n in range(1, USERS + 1)))
    credentials.chmod(0o600)
    size = sum(p.stat().st_size for p in outputs.rglob("*") if p.is_file())
    files = sum(1 for p in outputs.rglob("*") if p.is_file())
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_CALLBACK_RESULT_FORMAT": "json"}
    python = os.environ.get("COMFY_WRAPUP_HOST_PYTHON") or str(REPO / ".venv/bin/python")

    def module(jobs):
        share_dir = work / f"share-{jobs}"
        module_args = {
            "outputs_dir": str(outputs),
            "credentials_file": str(credentials),
            "share_dir": str(share_dir),
            "workshop_id": "bench",
            "folder": str(work / f"served-{jobs}"),
            "base_url": "https://example.org/share",
            "jobs": jobs,
        }
        command = ["ansible", "localhost", "-c", "local", "-i", "localhost,", "-e", f"ansible_python_interpreter={python}"]
        return [*command, "-m", "share_archives", "-a", json.dumps(module_args)], share_dir / "archives"

    # The checklist's password is a throwaway here; on a real host it would show in `ps`.
    checklist = ["zip", "-q", "-r", "-P", "bench", str(work / "workshop-outputs.zip"), "data/outputs/"]
    contenders = [("checklist: zip -r -P (one zip)", checklist, {"cwd": work}, work / "workshop-outputs.zip")]
    quiet = {"cwd": REPO, "env": env, "stdout": subprocess.DEVNULL}
    for jobs in (1, 4):
        command, produced = module(jobs)
        contenders.append((f"share_archives, {jobs} at once", command, quiet, produced))
    gib = size / 2**30
    print(f"{files} files, {gib:.2f} GiB of incompressible PNG/MP4-like outputs, {USERS} participants, {os.cpu_count()} CPUs")
    print(f"{'contender':<34} {'seconds':>8} {'MiB/s':>8} {'output MiB':>11} {'archives':>9}  cache")
    for name, command, kwargs, produced in contenders:
        seconds, cold = timed(command, **kwargs)
        made = [produced] if produced.is_file() else sorted(produced.glob("*.zip"))
        out_mib = sum(p.stat().st_size for p in made) / 2**20
        rate = size / 2**20 / seconds
        print(f"{name:<34} {seconds:>8.1f} {rate:>8.0f} {out_mib:>11.0f} {len(made):>9}  {'cold' if cold else 'warm'}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"largest resident set of any run: {peak:.0f} MiB (the module streams: flat memory whatever the sizes)")
    print("share_archives also hashes each archive (sha256, for the run record) and copies it to the served folder.")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
