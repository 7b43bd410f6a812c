#!/usr/bin/env bash
# THE start command (`npm run demo`): installs what is missing, then starts on this machine
#   Redis (REDIS_PORT, default 6379), an SMTP sink (127.0.0.1:2526), the API (http://127.0.0.1:8080,
#   token demo-token), one SMTP worker, a throwaway slapd with demo users on ldap://127.0.0.1:3389
#   (cn=admin,dc=example,dc=com, password secret) and a demo PKI, and loads the README's deployment C
#   (listener 127.0.0.1:2587) through the HTTP API.
# Everything lives in .demo/ (logs in .demo/logs/). Ctrl-C or SIGTERM stops everything it started.
# Env: REDIS_PORT (6379), API_PORT (8080), API_TOKEN (demo-token), LDAP_PORT (3389), LDAP_ADMIN_PASSWORD (secret).
set -uo pipefail
set -m # every background service gets its own process group, stopped as a whole

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
DEMO_DIR=$ROOT/.demo
REDIS_PORT=${REDIS_PORT:-6379}
API_PORT=${API_PORT:-8080}
API_TOKEN=${API_TOKEN:-demo-token}
SMTP_PORT=2587
SINK_PORT=2526
METRICS_PORT=${METRICS_PORT:-9465}
LDAP_PORT=${LDAP_PORT:-3389}
LDAP_ADMIN_PASSWORD=${LDAP_ADMIN_PASSWORD:-secret}
API_URL="http://127.0.0.1:$API_PORT"

say() { printf 'demo: %s\n' "$*"; }

names=()
pids=()

cleanup() {
  local rc=$?
  trap - EXIT
  trap '' INT TERM HUP # a second Ctrl-C or SIGTERM must not cut the cleanup short
  set +m # no job status lines while stopping
  if [ ${#pids[@]} -gt 0 ]; then
    say "stopping ${names[*]}"
    local i
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
      kill -TERM -- "-${pids[i]}" 2>/dev/null || kill -TERM "${pids[i]}" 2>/dev/null || true
    done
    for _ in $(seq 1 40); do
      local alive=0
      for i in "${!pids[@]}"; do
        if kill -0 -- "-${pids[i]}" 2>/dev/null; then alive=1; fi
      done
      [ $alive -eq 0 ] && break
      sleep 0.25
    done
    for i in "${!pids[@]}"; do
      kill -KILL -- "-${pids[i]}" 2>/dev/null || true
    done
    say "stopped"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

die() {
  say "$*" >&2
  exit 1
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start NAME COMMAND...: runs COMMAND in the background, output in .demo/logs/NAME.log
start() {
  local name=$1
  shift
  "$@" </dev/null >"$DEMO_DIR/logs/$name.log" 2>&1 &
  names+=("$name")
  pids+=("$!")
}

# wait_port NAME PORT SECONDS: waits until PORT answers, failing early if NAME's process exited
wait_port() {
  local name=$1 port=$2 secs=$3 pid="" i
  for i in "${!names[@]}"; do [ "${names[i]}" = "$name" ] && pid=${pids[i]}; done
  local deadline=$((SECONDS + secs))
  until port_busy "$port"; do
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$DEMO_DIR/logs/$name.log" >&2
      die "$name exited before listening on port $port (log: .demo/logs/$name.log)"
    fi
    [ $SECONDS -ge $deadline ] && die "$name is not listening on port $port after $secs s (log: .demo/logs/$name.log)"
    sleep 0.1
  done
}

bash scripts/ensure-deps.sh || die "ensure-deps failed"

for p in "$REDIS_PORT:Redis (set REDIS_PORT to use another port)" "$API_PORT:the API (set API_PORT)" \
  "$SMTP_PORT:the demo SMTP listener" "$SINK_PORT:the demo sink" "$METRICS_PORT:the worker metrics (set METRICS_PORT)" \
  "$LDAP_PORT:the demo LDAP directory (set LDAP_PORT)"; do
  port=${p%%:*}
  if port_busy "$port"; then die "port $port, needed for ${p#*:}, is taken: is a demo (or a system service) already running?"; fi
done

rm -rf "$DEMO_DIR"
mkdir -p "$DEMO_DIR/logs" "$DEMO_DIR/redis" "$DEMO_DIR/pki"

say "starting redis-server on 127.0.0.1:$REDIS_PORT"
start redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize no --dir "$DEMO_DIR/redis"
wait_port redis "$REDIS_PORT" 10

say "starting the SMTP sink on 127.0.0.1:$SINK_PORT"
start sink node --import tsx scripts/sink.ts --port "$SINK_PORT"
wait_port sink "$SINK_PORT" 30

REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
say "starting the API on $API_URL"
start api env API_TOKEN="$API_TOKEN" REDIS_URL="$REDIS_URL" API_HOST=127.0.0.1 API_PORT="$API_PORT" \
  CRL_FILE_ROOT="$DEMO_DIR/pki" npm run --silent start:api
wait_port api "$API_PORT" 60

say "starting one SMTP worker (metrics on 127.0.0.1:$METRICS_PORT)"
start worker env REDIS_URL="$REDIS_URL" WORKER_ID=demo-worker-1 METRICS_PORT="$METRICS_PORT" npm run --silent start:worker
wait_port worker "$METRICS_PORT" 60

say "making the demo PKI, starting slapd, loading the demo configuration"
start setup env API_URL="$API_URL" API_TOKEN="$API_TOKEN" DEMO_DIR="$DEMO_DIR" SMTP_PORT="$SMTP_PORT" SINK_PORT="$SINK_PORT" \
  LDAP_PORT="$LDAP_PORT" LDAP_ADMIN_PASSWORD="$LDAP_ADMIN_PASSWORD" node --import tsx scripts/demo-setup.ts
setup_pid=${pids[-1]}
deadline=$((SECONDS + 120))
until [ -f "$DEMO_DIR/ready.json" ]; do
  if ! kill -0 "$setup_pid" 2>/dev/null; then
    tail -n 30 "$DEMO_DIR/logs/setup.log" >&2
    die "demo setup failed (log: .demo/logs/setup.log)"
  fi
  [ $SECONDS -ge $deadline ] && die "demo setup did not finish in 120 s (log: .demo/logs/setup.log)"
  sleep 0.2
done
wait_port worker "$SMTP_PORT" 15

LDAP_URL=$(sed -n 's/.*"ldapUrl": "\([^"]*\)".*/\1/p' "$DEMO_DIR/ready.json")
cat <<EOF

certgate demo is running.  Ctrl-C stops everything.

  API          $API_URL            (Swagger UI: $API_URL/docs)
  token        $API_TOKEN             curl -H "Authorization: Bearer $API_TOKEN" $API_URL/v1/config
  SMTP         127.0.0.1:$SMTP_PORT (STARTTLS; certificate, or SMTP AUTH after STARTTLS)
  next hop     127.0.0.1:$SINK_PORT (sink; messages are logged in .demo/logs/sink.log)
  Redis        $REDIS_URL
  LDAP         $LDAP_URL  (base dc=example,dc=com; admin cn=admin,dc=example,dc=com password $LDAP_ADMIN_PASSWORD)
               users jdoe (card holder), asmith, bexempt, cemergency; their password: demo-pass
  PKI          .demo/pki/  (ca.pem, server.pem, client.pem + client.key, client.p12 password "demo")
  logs         .demo/logs/{redis,sink,api,worker,setup}.log

Try:
  # card holder, by certificate (no AUTH needed)
  swaks --server 127.0.0.1:$SMTP_PORT --tls --tls-cert .demo/pki/client.pem --tls-key .demo/pki/client.key --from john.doe@example.com --to someone@example.org
  # user without a card, by password after STARTTLS
  swaks --server 127.0.0.1:$SMTP_PORT --tls --auth PLAIN --auth-user asmith --auth-password demo-pass --from alice.smith@example.com --to someone@example.org
  # card holder trying a password: 525
  swaks --server 127.0.0.1:$SMTP_PORT --tls --auth PLAIN --auth-user jdoe --auth-password demo-pass --from john.doe@example.com --to someone@example.org
  # what happened, how things are
  CERTGATE_URL=$API_URL CERTGATE_TOKEN=$API_TOKEN npx certgate events --limit 10
  CERTGATE_URL=$API_URL CERTGATE_TOKEN=$API_TOKEN npx certgate doctor submission --ca .demo/pki/ca.pem

EOF

# Wait until told to stop, or until a service dies.
while :; do
  wait -n
  for i in "${!pids[@]}"; do
    if ! kill -0 "${pids[i]}" 2>/dev/null; then
      tail -n 20 "$DEMO_DIR/logs/${names[i]}.log" >&2
      die "${names[i]} stopped unexpectedly (log: .demo/logs/${names[i]}.log)"
    fi
  done
done
