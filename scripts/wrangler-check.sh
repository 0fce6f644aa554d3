#!/usr/bin/env bash
# Drive the real wrangler CLI (from npm) against stepstone, unmodified:
#   1. REST mode: CLOUDFLARE_API_BASE_URL=http://127.0.0.1:$PORT/client/v4 (the v4 API), and
#   2. --local --port $PORT (the local explorer API under /cdn-cgi/[local/]explorer/api),
# over `stepstone dev` running the starter project from `stepstone init` in a temporary directory; then
#   3. `wrangler deploy --dry-run` of that project's stepstone.toml (compatibility_date and python_workers).
#
#   scripts/wrangler-check.sh                 # wrangler 4.86.0 (runs on node 20)
#   WRANGLER_VERSION=4.164.0 scripts/wrangler-check.sh    # newer wranglers need node >= 22
#
# Prints every command and its output; exits 1 if any command failed. Needs node, npm and network access to
# the npm registry. docs/rest.md records a run.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
version="${WRANGLER_VERSION:-4.86.0}"
port="${PORT:-$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}"
work=$(mktemp -d)
dev_pid=""
cleanup() {
  if [ -n "$dev_pid" ]; then kill "$dev_pid" 2>/dev/null; wait "$dev_pid" 2>/dev/null; fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "== installing wrangler@$version with npm (node $(node --version))"
npm install --prefix "$work/npm" --no-audit --no-fund --loglevel=error "wrangler@$version" >/dev/null || exit 1
wrangler="$work/npm/node_modules/.bin/wrangler"
"$wrangler" --version

echo "== stepstone dev on 127.0.0.1:$port (the starter project of stepstone init)"
.venv/bin/stepstone init "$work/project" >/dev/null || exit 1
(cd "$work/project" && exec "$root/.venv/bin/stepstone" dev --port "$port") >"$work/dev.log" 2>&1 &
dev_pid=$!
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$port/health" >/dev/null && break
  sleep 0.1
done
curl -fs "http://127.0.0.1:$port/health" >/dev/null || { cat "$work/dev.log"; exit 1; }

failures=0
wf=$(cd "$work/project" && sed -n 's/^name = "\(.*-workflow\)"/\1/p' stepstone.toml)
run() {
  echo
  echo "\$ wrangler $*"
  (cd "$work" && "$wrangler" "$@" 2>&1) | sed -e 's/\x1b\[[0-9;]*m//g' -e "s#$work#<tmp>#g"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ]; then
    echo "!! exit status $rc"
    failures=$((failures + 1))
  fi
}

echo
echo "== REST mode: CLOUDFLARE_API_BASE_URL=http://127.0.0.1:$port/client/v4"
export CLOUDFLARE_API_BASE_URL="http://127.0.0.1:$port/client/v4" CLOUDFLARE_API_TOKEN=any-token
export CLOUDFLARE_ACCOUNT_ID=local WRANGLER_SEND_METRICS=false CI=1
run workflows list
run workflows describe "$wf"
run workflows trigger "$wf" '{"email": "ada@example.com"}' --id rest-1
sleep 2
run workflows instances pause "$wf" rest-1
run workflows instances resume "$wf" rest-1
sleep 7
run workflows instances list "$wf"
run workflows instances send-event "$wf" rest-1 --type approval --payload '{"approved": true}'
sleep 1
run workflows instances describe "$wf" latest
run workflows trigger "$wf" '{"email": "bob@example.com"}' --id rest-2
run workflows instances terminate "$wf" rest-2
run workflows instances restart "$wf" rest-2
run workflows instances list "$wf" --status complete --per-page 5
if (cd "$work" && "$wrangler" workflows instances --help 2>&1 | grep -q "instances delete"); then
  run workflows instances delete "$wf" rest-2
else
  echo; echo "(wrangler $version has no 'workflows instances delete')"
fi

echo
echo "== local mode: --local --port $port (no token, no account)"
unset CLOUDFLARE_API_BASE_URL CLOUDFLARE_API_TOKEN CLOUDFLARE_ACCOUNT_ID
run workflows list --local --port "$port"
run workflows describe "$wf" --local --port "$port"
run workflows trigger "$wf" '{"email": "eve@example.com"}' --id local-1 --local --port "$port"
sleep 2
run workflows instances list "$wf" --local --port "$port"
run workflows instances pause "$wf" local-1 --local --port "$port"
run workflows instances resume "$wf" local-1 --local --port "$port"
sleep 7
run workflows instances send-event "$wf" local-1 --type approval --payload '{"approved": false}' --local --port "$port"
sleep 1
run workflows instances describe "$wf" local-1 --local --port "$port"
run workflows trigger "$wf" '{"email": "mallory@example.com"}' --id local-2 --local --port "$port"
run workflows instances terminate "$wf" local-2 --local --port "$port"
run workflows instances restart "$wf" local-2 --local --port "$port"
run workflows delete "$wf" --local --port "$port"
run workflows list --local --port "$port"

echo
echo "== the project itself: wrangler reads stepstone init's file as a Python Worker's configuration"
run deploy --dry-run --config project/stepstone.toml --outdir dry-run

echo
if [ "$failures" -ne 0 ]; then
  echo "== $failures wrangler command(s) failed"
  echo "-- stepstone dev log:"; sed -e "s#$work#<tmp>#g" "$work/dev.log"
  exit 1
fi
echo "== every wrangler command succeeded"
