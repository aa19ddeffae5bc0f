#!/usr/bin/env bash
# make demo: a workshop played on the staging replica, then wrapped up by post_workshop.yml.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== Bringing up the staging workshop (empty) =="
ansible-playbook playbooks/staging.yml -e staging_workshop_action=reset
echo "== Playing a workshop: participants submit jobs in bursts =="
ansible-playbook playbooks/staging.yml -e staging_workshop_action=play
echo "== Wrapping it up: ansible-playbook post_workshop.yml =="
ansible-playbook post_workshop.yml

project=$(ansible-inventory --host localhost | python3 -c 'import json,sys; print(json.load(sys.stdin)["workshop_project_dir"])')
cat <<SUMMARY

== Demo finished ==
Staging workshop:  $project (compose project comfyui, still running)
  queue manager    http://127.0.0.1:3000/api/queue/status
  admin dashboard  http://127.0.0.1:8080/  (user admin, ADMIN_PASSWORD in $project/.env)
  outputs          $project/data/outputs/
Docker Engine:     DOCKER_HOST=$DOCKER_HOST
Tear down:         make staging-down && make engine-stop
SUMMARY
