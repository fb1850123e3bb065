#!/usr/bin/env bash
# Installs what badgestream needs from the OS on a fresh Debian/Ubuntu machine: Java 17+ and Maven
# (the local Kafka broker is fetched from Maven Central and run on the JVM) and the PostgreSQL
# server (tests run against a throwaway cluster), and Chromium (the browser tests of the profile
# pages drive it headless through Playwright). Does nothing when everything is already there.
set -euo pipefail

missing=()
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
if ! command -v pg_ctl >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  missing+=(postgresql)
fi
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
python3 - <<'PY' || { echo "badgestream needs Python >= 3.11 (python3 is $(python3 --version 2>&1))" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY

if ((${#missing[@]} == 0)); then
  exit 0
fi
echo "[deps] installing OS packages: ${missing[*]}" >&2
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "[deps] cannot install ${missing[*]} here (need root and apt-get): install them, or point" >&2
  echo "[deps] BADGESTREAM_KAFKA_BOOTSTRAP_SERVERS / BADGESTREAM_TEST_POSTGRES_URL at existing servers" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian's postgresql package starts a cluster on 5432; ours are throwaway clusters on other ports.
if [[ " ${missing[*]} " == *" postgresql "* ]] && command -v service >/dev/null 2>&1; then
  service postgresql stop >/dev/null 2>&1 || true
fi
echo "[deps] done" >&2
