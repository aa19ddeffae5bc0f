#!/usr/bin/env python3
"""Archiving a backup off the host: archive_copy against the platform's way (rclone copy), same server.

Seals a backup of incompressible PNG/MP4-like outputs (as a workshop's are), starts a real S3 server
on loopback (`rclone serve s3`, as the tests do), and times, on the same backup and server:
  - the platform's way: rclone copy --checksum <backup> :s3:<bucket>/rclone/<backup>  (its R2 scripts'
    checksum-skip copy), then the same again on the unchanged backup;
  - archive_copy (the module, run by ansible): resumable multipart, every file checked against the
    manifest's sha256, then HEAD-checked (size, sha256 metadata, ETag); then again, unchanged.
The second, unchanged run's time is given as a fraction of the first.

    python bench/archive_speed.py [--gigabytes 1] [--workdir /var/tmp/comfy-wrapup-bench-archive]
"""

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from benchlib import REPO, ad_hoc_module, make_outputs, timed

sys.path[:0] = [str(REPO / "tests")]
import ansible.module_utils

ansible.module_utils.__path__.append(str(REPO / "module_utils"))
from ansible.module_utils.workshop_backup import backup_name, seal
from ansible.module_utils.workshop_record import record_backup
from s3server import ACCESS_KEY, BUCKET, SECRET_KEY, S3Server, rclone


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gigabytes", type=float, default=1.0)
    parser.add_argument("--workdir", default="/var/tmp/comfy-wrapup-bench-archive")
    args = parser.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    partial = work / "backups" / "bench" / ".partial-backup-bench"
    make_outputs(work / "outputs", int(args.gigabytes * 1024))
    partial.mkdir(parents=True)
    subprocess.run(["tar", "-cf", str(partial / "outputs.tar"), "-C", str(work), "outputs"], check=True)
    shutil.rmtree(work / "outputs")
    (partial / "redis").mkdir()
    (partial / "redis" / "dump.rdb").write_bytes(os.urandom(4 << 20))
    name = backup_name()
    folder = work / "backups" / "bench" / name
    manifest = seal(str(partial), str(folder), {"workshop_id": "bench"}).manifest
    record = work / "backups" / "bench" / "run-record.json"
    record_backup(str(record), name, str(folder), len(manifest["files"]), {})
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())

    server = S3Server(work / "s3").start()
    try:
        # Keys through the environment, as both tools read them; never on a command line.
        rclone_env = {
            **os.environ,
            "RCLONE_CONFIG": os.devnull,
            "RCLONE_S3_PROVIDER": "Other",
            "RCLONE_S3_ENDPOINT": server.endpoint_url,
            "RCLONE_S3_ACCESS_KEY_ID": ACCESS_KEY,
            "RCLONE_S3_SECRET_ACCESS_KEY": SECRET_KEY,
        }
        rclone_copy = [rclone(), "copy", "--checksum", str(folder), f":s3:{BUCKET}/rclone/{name}"]
        target = dict(name="bench", type="s3", endpoint_url=server.endpoint_url, bucket=BUCKET, prefix="module")
        module_args = dict(target=target, workshop_id="bench", backup_dir=str(folder.parent), record=str(record))
        ansible_env = {
            **os.environ,
            "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        }
        archive_copy = ad_hoc_module("archive_copy", module_args)
        quiet = {"stdout": subprocess.DEVNULL}
        rows = []
        for label, command, kwargs in (
            ("platform: rclone copy --checksum", rclone_copy, {"env": rclone_env, **quiet}),
            ("archive_copy (ansible)", archive_copy, {"env": ansible_env, "cwd": REPO, **quiet}),
        ):
            first, _cold = timed(command, cold=False, **kwargs)
            second, _cold = timed(command, cold=False, **kwargs)
            rows.append((label, first, second))
    finally:
        server.stop()
    print(f"one sealed backup: {len(manifest['files']) + 1} files, {size / 2**20:.0f} MiB; rclone serve s3 on loopback")
    print(f"{'contender':<34} {'1st s':>7} {'MiB/s':>7} {'2nd s':>7} {'2nd/1st':>8}")
    for label, first, second in rows:
        print(f"{label:<34} {first:>7.2f} {size / 2**20 / first:>7.0f} {second:>7.2f} {second / first:>8.1%}")
    print("archive_copy also checks every file against the manifest's sha256 and HEAD-checks every object after it.")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
