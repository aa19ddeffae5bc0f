#!/usr/bin/env python3
"""The whole wrap-up: post_workshop.yml (drain to report) against the checklist's own commands, same data.

On a staging workshop of its own (slot --slot, default 17: ports +17000, folders and containers
suffixed -s17; see inventory/local), made realistic (--users participants played, then
--gigabytes of PNG/MP4-like outputs added with benchlib.make_outputs), each from a cold page cache:
  1. the checklist: bench/checklist.sh, its shell steps in its order (tar -czf of the outputs, docker
     compose logs, SAVE + copy of dump.rdb, cp of the config, the full tar -czf backup, the metrics greps)
  2. post_workshop.yml, the first time (nothing backed up yet)
  3. post_workshop.yml again, nothing changed: the re-run, which should cost a small share of the first
  4. with --fleet SLOTS (e.g. 18,19): the same workshops made on those slots too, then the wrap-up of the
     first workshop alone and of all of them in one run (one host each, ansible_connection=local,
     per-host workshop_* settings as inventory/local's slots), each made fresh first
Seconds per task of every playbook run go to --workdir (task_times callback, bench/callback_plugins),
and the slowest tasks are printed. --json writes the figures for make bench's table.

The machine is shared: the figures are single runs under whatever load there is; the ratios matter.
    .venv/bin/python bench/wrapup_speed.py [--slot 17] [--gigabytes 2] [--users 20] [--fleet 18,19] [--json out.json]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchlib import REPO, drop_caches, make_outputs

STAGING = "/var/lib/comfy-wrapup/staging-s{slot}/comfyui"
BACKUPS = "/var/lib/comfy-wrapup/backups-s{slot}"


def slot_env(slot, **extra):
    env = {**os.environ, "COMFY_WRAPUP_SLOT": str(slot), "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")}
    env["PATH"] = f"{REPO / '.venv/bin'}:{env.get('PATH', '')}"
    env.setdefault("COMFY_WRAPUP_HOST_PYTHON", str(REPO / ".venv-host/bin/python"))
    env.setdefault("DOCKER_HOST", "unix:///run/comfy-wrapup/docker.sock")
    return {**env, **extra}


def run(command, env, log):
    with open(log, "ab") as out:
        done = subprocess.run(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed (exit {done.returncode}): see {log}")


def prepare(slot, users, gigabytes, work):
    """A fresh played workshop on `slot`: reset (down -v, up), a played afternoon, extra outputs, no backups."""
    log = work / f"prepare-s{slot}.log"
    staging = ["ansible-playbook", "playbooks/staging.yml", "-e", f"staging_workshop_num_users={users}"]
    env = slot_env(slot)
    action = "reset" if Path(STAGING.format(slot=slot), "docker-compose.yml").exists() else "up"
    run([*staging, "-e", f"staging_workshop_action={action}"], env, log)
    run([*staging, "-e", "staging_workshop_action=play"], env, log)
    make_outputs(Path(STAGING.format(slot=slot)) / "data" / "outputs", int(gigabytes * 1024), users)
    shutil.rmtree(BACKUPS.format(slot=slot), ignore_errors=True)


def fleet_inventory(slots, work):
    """One host per slot, reached locally, with the workshop_* settings inventory/local gives that slot."""
    python = slot_env(0)["COMFY_WRAPUP_HOST_PYTHON"]
    lines = ["[workshop]"]
    for slot in slots:
        lines.append(
            # Each host an id of its own: the run refuses two hosts with one (their archive keys and links).
            f"workshop-s{slot} ansible_connection=local ansible_python_interpreter={python} workshop_id=staging-s{slot}"
            f" workshop_docker_host={slot_env(0)['DOCKER_HOST']} workshop_project_dir={STAGING.format(slot=slot)}"
            f" workshop_backup_root={BACKUPS.format(slot=slot)} workshop_redis_port={6379 + 1000 * slot}"
            f" workshop_queue_manager_url=http://127.0.0.1:{3000 + 1000 * slot}"
        )
    path = work / f"fleet-{'-'.join(map(str, slots))}.ini"
    path.write_text("\n".join(lines) + "\n")
    return path


def wrapup(slot, work, label, inventory=None):
    """Seconds of one post_workshop.yml run from a cold cache; its task times are kept beside."""
    times = work / f"tasks-{label}.json"
    env = slot_env(
        slot,
        ANSIBLE_CALLBACK_PLUGINS=str(REPO / "bench/callback_plugins"),
        ANSIBLE_CALLBACKS_ENABLED="task_times",
        COMFY_WRAPUP_TASK_TIMES=str(times),
    )
    command = ["ansible-playbook", "post_workshop.yml"] + (["-i", str(inventory)] if inventory else [])
    drop_caches()
    start = time.perf_counter()
    run(command, env, work / f"{label}.log")
    seconds = time.perf_counter() - start
    slowest = sorted(json.loads(times.read_text()), key=lambda row: -row[2])[:6]
    print(f"  {label}: {seconds:.1f} s; slowest tasks: " + "; ".join(f"{task} {sec:.1f}s" for _play, task, sec in slowest))
    return seconds


def checklist(slot, work):
    out = work / "checklist-out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = slot_env(
        slot,
        PROJECT_DIR=STAGING.format(slot=slot),
        COMPOSE_PROJECT=f"comfyui-s{slot}",
        REDIS_PORT=str(6379 + 1000 * slot),
        QUEUE_MANAGER_URL=f"http://127.0.0.1:{3000 + 1000 * slot}",
        REDIS_CONTAINER=f"comfy-s{slot}-redis",
        OUT=str(out),
    )
    drop_caches()
    start = time.perf_counter()
    run(["bash", str(REPO / "bench/checklist.sh")], env, work / "checklist.log")
    seconds = time.perf_counter() - start
    shutil.rmtree(out)
    print(f"  checklist.sh: {seconds:.1f} s")
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slot", type=int, default=17)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--gigabytes", type=float, default=2.0)
    parser.add_argument("--fleet", default="", help="more slots for the 1-vs-N run, e.g. 18,19 (empty: skip it)")
    parser.add_argument("--workdir", default="/var/tmp/comfy-wrapup-bench-wrapup")
    parser.add_argument("--json", help="write the figures here (for make bench's table)")
    parser.add_argument("--down", action="store_true", help="bring the slots' workshops down at the end")
    parser.add_argument(
        "--no-prepare", action="store_true", help="use the slot's workshop as it is (made fresh by an earlier run)"
    )
    parser.add_argument("--skip-checklist", action="store_true", help="leave the checklist's commands out")
    args = parser.parse_args()
    if args.slot == 0:
        sys.exit("slot 0 is the platform's own layout (make demo, tests): give the bench a slot of its own")
    work = Path(args.workdir)
    if not args.no_prepare:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    figures = {"users": args.users, "gigabytes": args.gigabytes, "slot": args.slot}
    print(f"Staging workshop on slot {args.slot}: {args.users} participants, {args.gigabytes} GiB of outputs")
    if args.no_prepare:
        shutil.rmtree(BACKUPS.format(slot=args.slot), ignore_errors=True)
    else:
        prepare(args.slot, args.users, args.gigabytes, work)
    figures["checklist"] = None if args.skip_checklist else checklist(args.slot, work)
    figures["first"] = wrapup(args.slot, work, "first")
    figures["rerun"] = wrapup(args.slot, work, "rerun")
    print(
        f"wrap-up {figures['first']:.1f} s (checklist {figures['checklist'] or float('nan'):.1f} s); "
        f"unchanged re-run {figures['rerun']:.1f} s = {100 * figures['rerun'] / figures['first']:.0f}% of the first"
    )
    others = [int(slot) for slot in args.fleet.split(",") if slot.strip()]
    if others:
        slots = [args.slot, *others]
        print(f"1 vs {len(slots)} workshops (slots {', '.join(map(str, slots))}), each made fresh first")
        prepare(args.slot, args.users, args.gigabytes, work)
        figures["one"] = wrapup(args.slot, work, "one", fleet_inventory([args.slot], work))
        for slot in slots:
            prepare(slot, args.users, args.gigabytes, work)
        figures["fleet"] = wrapup(args.slot, work, f"fleet-of-{len(slots)}", fleet_inventory(slots, work))
        figures["fleet_size"] = len(slots)
        print(f"{len(slots)} workshops in one run took {figures['fleet'] / figures['one']:.2f}x one workshop's time")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
    if args.down:
        for slot in [args.slot, *others]:
            run(
                ["ansible-playbook", "playbooks/staging.yml", "-e", "staging_workshop_action=down"],
                slot_env(slot),
                work / "down.log",
            )


if __name__ == "__main__":
    main()
