#!/usr/bin/env bash
# Makes sure a Docker engine answers: starts dockerd (as root) when it is installed but not running.
# Tests that need Docker fail under LAS_REQUIRE_DOCKER=1 when none answers, so CI calls this first.
set -u
if docker info >/dev/null 2>&1; then
  exit 0
fi
if ! command -v dockerd >/dev/null 2>&1; then
  echo "ensure-docker: dockerd is not installed; Docker tests will fail under LAS_REQUIRE_DOCKER=1" >&2
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "ensure-docker: the Docker engine is not running and only root may start it here" >&2
  exit 0
fi
echo "ensure-docker: starting dockerd" >&2
mkdir -p /var/log
setsid nohup dockerd >/var/log/dockerd-las.log 2>&1 < /dev/null &
for _ in $(seq 1 60); do
  docker info >/dev/null 2>&1 && exit 0
  sleep 1
done
echo "ensure-docker: dockerd did not answer within 60 s; see /var/log/dockerd-las.log" >&2
exit 0
