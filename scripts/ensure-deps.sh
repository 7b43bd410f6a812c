#!/usr/bin/env bash
# Installs what certgate needs on a Debian 12 machine with Node 20, and nothing that is already there.
# Idempotent: a second run only checks. One line per action, prefixed "ensure-deps:".
#   Debian packages: RUN_PACKAGES below; with --test also TEST_PACKAGES (the real peers the tests drive)
#   npm packages:    npm ci when node_modules is missing or older than package-lock.json
# ENSURE_DEPS_APT may replace the Debian package list (space separated).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'ensure-deps: %s\n' "$*"; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
  fi
fi
as_root() {
  if [ "$(id -u)" -ne 0 ] && [ ${#SUDO[@]} -eq 0 ]; then
    say "need root (or sudo) for: $*" >&2
    return 1
  fi
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive "$@"
}

# ---------------------------------------------------------------- Debian packages
# One package a line, so that changes merge cleanly.
RUN_PACKAGES=(
  redis-server
  slapd
  ldap-utils
  openssl
  swaks
  libnet-ssleay-perl   # swaks --tls (a Recommends, which --no-install-recommends leaves out)
  libio-socket-ssl-perl
  python3
)
TEST_PACKAGES=(
  chromium             # Swagger UI test
  postfix              # a real relaying client and benchmark reference (test/helpers/postfix.ts)
  iproute2             # `ip link set lo up` in the network namespace of the test OCSP responder
  util-linux           # unshare and nsenter for it (test/helpers/ocsp-responder.ts)
  prometheus           # promtool: checks deploy/prometheus/alerts.yml (test/monitoring.test.ts)
  msmtp                # a real mail client with `auth external` (test/msmtp.test.ts)
  samba                # Active Directory DC for the directory tests (test/helpers/samba-ad.ts)
  samba-ad-dc
  samba-ad-provision   # provisioning data (a Recommends of samba-ad-dc)
  samba-dsdb-modules
  389-ds-base          # 389 Directory Server (test/helpers/dirsrv.ts)
  libnss3-tools        # certutil, pk12util: the 389-ds server certificate
  haproxy              # a real TCP balancer sending the PROXY protocol (v1 and v2)
  redis-sentinel       # Redis high availability tests (a master, a replica, three sentinels)
)
PACKAGES=("${RUN_PACKAGES[@]}")
if [ "${1:-}" = --test ]; then PACKAGES+=("${TEST_PACKAGES[@]}"); fi
if [ -n "${ENSURE_DEPS_APT:-}" ]; then read -r -a PACKAGES <<<"$ENSURE_DEPS_APT"; fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

pid_alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

# Stops a system service that a package started (certgate runs its own throwaway instances).
stop_system_service() {
  local name=$1 pidfile=$2 pid=""
  [ -f "$pidfile" ] && pid=$(cat "$pidfile" 2>/dev/null || true)
  local running=no
  if pid_alive "$pid"; then running=yes; fi
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$name" 2>/dev/null; then
    running=yes
  fi
  if [ "$running" = yes ]; then
    say "stopping the system $name service its package started"
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
      as_root systemctl stop "$name" >/dev/null 2>&1 || true
      as_root systemctl disable "$name" >/dev/null 2>&1 || true
    elif command -v service >/dev/null 2>&1; then
      as_root service "$name" stop >/dev/null 2>&1 || true
    fi
    if pid_alive "$pid"; then
      as_root kill "$pid" 2>/dev/null || true
    fi
  fi
  if command -v update-rc.d >/dev/null 2>&1 && [ -e "/etc/init.d/$name" ]; then
    as_root update-rc.d "$name" disable >/dev/null 2>&1 || true
  fi
}

if [ ${#missing[@]} -eq 0 ]; then
  say "Debian packages present: ${PACKAGES[*]}"
else
  if ! command -v apt-get >/dev/null 2>&1; then
    say "missing ${missing[*]} and no apt-get: install them by hand" >&2
    exit 1
  fi
  say "apt-get update (missing: ${missing[*]})"
  as_root apt-get -o DPkg::Lock::Timeout=300 update -qq >/dev/null

  for p in "${missing[@]}"; do
    if [ "$p" = slapd ]; then
      say "preseeding slapd (no system database, no questions)"
      as_root debconf-set-selections <<'EOF'
slapd slapd/no_configuration boolean true
slapd slapd/domain string example.com
slapd shared/organization string example
slapd slapd/purge_database boolean true
slapd slapd/move_old_database boolean true
EOF
    fi
    if [ "$p" = postfix ]; then
      # Tests run private instances (test/helpers/postfix.ts); the system one gets no main.cf.
      say "preseeding postfix (no configuration)"
      as_root debconf-set-selections <<'EOF'
postfix postfix/main_mailer_type select No configuration
EOF
    fi
  done

  # Keep package scripts from starting services while we install (unless a policy is already in place).
  policy_added=no
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# added by certgate scripts/ensure-deps.sh during apt-get install\nexit 101\n' |
      as_root tee /usr/sbin/policy-rc.d >/dev/null
    as_root chmod 755 /usr/sbin/policy-rc.d
    policy_added=yes
    trap 'as_root rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  say "apt-get install ${missing[*]}"
  set +e
  as_root apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}" >/tmp/certgate-apt.$$.log 2>&1
  rc=$?
  set -e
  if [ "$policy_added" = yes ]; then as_root rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
  if [ $rc -ne 0 ]; then
    tail -n 30 /tmp/certgate-apt.$$.log >&2
    say "apt-get install failed (exit $rc); log: /tmp/certgate-apt.$$.log" >&2
    exit $rc
  fi
  rm -f /tmp/certgate-apt.$$.log

  for p in "${missing[@]}"; do
    case "$p" in
      redis-server) stop_system_service redis-server /run/redis/redis-server.pid ;;
      redis-sentinel) stop_system_service redis-sentinel /run/sentinel/redis-sentinel.pid ;;
      slapd) stop_system_service slapd /run/slapd/slapd.pid ;;
      prometheus) stop_system_service prometheus /run/prometheus/prometheus.pid ;;
      samba-ad-dc) stop_system_service samba-ad-dc /run/samba/samba.pid ;;
      samba)
        stop_system_service smbd /run/samba/smbd.pid
        stop_system_service nmbd /run/samba/nmbd.pid
        ;;
      haproxy) stop_system_service haproxy /run/haproxy.pid ;;
    esac
  done
fi

# ---------------------------------------------------------------- Node.js and npm packages
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  say "node and npm are needed (Node 20): install them first" >&2
  exit 1
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  say "Node $(node -v) found; certgate needs Node 20 or later" >&2
  exit 1
fi

stamp=node_modules/.package-lock.json
[ -e "$stamp" ] || stamp=node_modules
if [ ! -d node_modules ]; then
  need_npm="node_modules is missing"
elif [ -f package-lock.json ] && [ package-lock.json -nt "$stamp" ]; then
  need_npm="node_modules is older than package-lock.json"
elif [ ! -f package-lock.json ] && [ package.json -nt "$stamp" ]; then
  need_npm="node_modules is older than package.json"
else
  need_npm=""
fi

if [ -z "$need_npm" ]; then
  say "node_modules up to date"
elif [ -f package-lock.json ]; then
  say "npm ci ($need_npm)"
  npm ci --no-audit --no-fund --loglevel=error
else
  say "npm install (no package-lock.json; $need_npm)"
  npm install --no-audit --no-fund --loglevel=error
fi
