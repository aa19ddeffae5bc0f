#!/usr/bin/env bash
# The post-workshop checklist's own shell steps (/work/shared/admin-checklist-post-workshop.md), in its
# order, on one workshop: what bench/wrapup_speed.py times against `ansible-playbook post_workshop.yml`.
# Only the commands an admin runs by hand; the waiting parts (watch until the queue is empty) are one read.
#   PROJECT_DIR=... COMPOSE_PROJECT=... REDIS_PORT=... QUEUE_MANAGER_URL=... REDIS_CONTAINER=... OUT=... bench/checklist.sh
# OUT: an empty scratch folder for what the checklist writes (it writes into the project folder; we do not).
set -euo pipefail
: "${PROJECT_DIR:?}" "${COMPOSE_PROJECT:?}" "${REDIS_PORT:?}" "${QUEUE_MANAGER_URL:?}" "${REDIS_CONTAINER:?}" "${OUT:?}"
if docker compose version >/dev/null 2>&1; then compose=(docker compose); else compose=(docker-compose); fi
compose+=(-p "$COMPOSE_PROJECT" --project-directory "$PROJECT_DIR")
REDIS_PASSWORD=$(sed -n 's/^REDIS_PASSWORD=//p' "$PROJECT_DIR/.env")
export REDISCLI_AUTH=$REDIS_PASSWORD # the checklist's `-a $REDIS_PASSWORD`, kept out of the process list
stamp=$(date +%Y%m%d-%H%M%S)
day=$(date +%Y%m%d)
cd "$PROJECT_DIR"

# Immediate: the queue, the completion time and the total jobs
curl -sf "$QUEUE_MANAGER_URL/api/queue/status" | jq ".queue_depth" >/dev/null
FINAL_TIME=$(date)
TOTAL_JOBS=$(curl -sf "$QUEUE_MANAGER_URL/api/queue/status" | jq '.completed_jobs')

# Short term: export outputs, logs, the database snapshot, the configuration
tar -czf "$OUT/outputs-backup-$stamp.tar.gz" data/outputs/
ls -lah "$OUT"/outputs-backup-*.tar.gz >/dev/null
"${compose[@]}" logs >"$OUT/workshop-logs-$stamp.txt" 2>&1
gzip "$OUT"/workshop-logs-*.txt
redis-cli -p "$REDIS_PORT" SAVE >/dev/null
docker cp "$REDIS_CONTAINER:/data/dump.rdb" "$OUT/redis-snapshot-$stamp.rdb" # the checklist: cp ./data/redis/dump.rdb
cp .env "$OUT/.env-workshop-$day"
cp docker-compose.yml "$OUT/docker-compose-$day.yml"

# Create full backup, verify it, list it
tar -czf "$OUT/workshop-backup-$day.tar.gz" data/outputs/ -C "$OUT" ".env-workshop-$day" "docker-compose-$day.yml" \
  "workshop-logs-$stamp.txt.gz" "redis-snapshot-$stamp.rdb"
tar -tzf "$OUT/workshop-backup-$day.tar.gz" | head -20 >/dev/null || true
ls -lah "$OUT"/workshop-backup-*.tar.gz >/dev/null

# Medium term: metrics and statistics, queue behaviour, error logs
TOTAL_JOBS=$(redis-cli -p "$REDIS_PORT" ZCARD queue:completed)
FAILED=$("${compose[@]}" logs worker-1 2>&1 | grep -ci "failed" || true)
echo "Total jobs completed: $TOTAL_JOBS, failed: $FAILED, success rate: $(((TOTAL_JOBS - FAILED) * 100 / (TOTAL_JOBS > 0 ? TOTAL_JOBS : 1)))% (final time $FINAL_TIME)"
"${compose[@]}" logs worker-1 2>&1 | grep "completed in" | awk '{print $NF}' | awk '{sum+=$1; count++} END {print "Average: " (count ? sum/count : 0) " seconds"}' || true
zcat "$OUT"/workshop-logs-*.txt.gz | grep -ci "thermal" || true
"${compose[@]}" logs 2>&1 | grep -ci "restarted\|crashed" || true
"${compose[@]}" logs worker-1 2>&1 | grep "started\|completed" | tail -10 >/dev/null || true
"${compose[@]}" logs 2>&1 | grep -i "error" >"$OUT/errors-found.txt" || true
"${compose[@]}" logs 2>&1 | grep -i "warning" >"$OUT/warnings-found.txt" || true
"${compose[@]}" logs 2>&1 | grep -i "ssl" >"$OUT/ssl-issues.txt" || true
"${compose[@]}" logs 2>&1 | grep -i "connection\|refused" >"$OUT/connection-issues.txt" || true
