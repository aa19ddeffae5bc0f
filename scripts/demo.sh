#!/usr/bin/env bash
# make demo: a workshop played on the staging replica, then wrapped up by post_workshop.yml.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each demo is a workshop of its own: its backups and run record go to a folder of their own.
workshop_id="demo-$(date -u +%Y%m%d-%H%M%S)"

# Slower jobs than the tests use, so the queue is still busy when the drain starts and its progress shows.
echo "== Bringing up the staging workshop (empty) =="
ansible-playbook playbooks/staging.yml -e staging_workshop_action=reset -e staging_workshop_job_seconds=1.5
echo "== Playing a workshop: participants submit jobs in bursts, jobs still running at the end =="
ansible-playbook playbooks/staging.yml -e staging_workshop_action=play -e staging_workshop_play_wait=false -e staging_workshop_job_seconds=1.5
echo "== Wrapping it up: ansible-playbook post_workshop.yml =="
ansible-playbook post_workshop.yml -e workshop_id="$workshop_id" -e drain_progress_seconds=3

# The settings as the playbooks saw them: templated (inventory/local derives them from the slot).
setting() {
    ANSIBLE_CALLBACK_RESULT_FORMAT=json ansible localhost -m ansible.builtin.debug -a "msg={{ $1 }}" 2>/dev/null |
        python3 -c 'import json,sys; print(json.loads(sys.stdin.read().partition(" => ")[2])["msg"])'
}
project=$(setting workshop_project_dir)
backups=$(setting workshop_backup_root)/$workshop_id
cat <<SUMMARY

== Demo finished ==
Workshop $workshop_id wrapped up; its results are in $backups/
  run-record.json  what every phase recorded (final time, total of jobs, backup, verification)
  announcement.txt the cut-off message read out to participants
  backup-*/        the verified backup: outputs.tar, user-files.tar, redis/dump.rdb, logs/, config/, MANIFEST.json
  report/          report.md, report.html (open offline in a browser), metrics.json, checklist.json (the verification checklist)
Staging workshop:  $project (compose project comfyui, still running)
  queue manager    http://127.0.0.1:3000/api/queue/status
  admin dashboard  http://127.0.0.1:8080/  (user admin, ADMIN_PASSWORD in $project/.env)
  outputs          $project/data/outputs/
Docker Engine:     DOCKER_HOST=$DOCKER_HOST
Tear down:         make staging-down && make engine-stop
SUMMARY
