#!/usr/bin/env bash
# Installs what pip cannot: a PostgreSQL server with PostGIS 3 (and GDAL's ogr2ogr for the
# benchmark peer). Debian/Ubuntu only; elsewhere it names exactly what is missing and stops.
set -euo pipefail

have_postgis() {
  local v
  for v in $(ls /usr/lib/postgresql 2>/dev/null | sort -rn); do
    [ -f "/usr/share/postgresql/$v/extension/postgis.control" ] && [ -x "/usr/lib/postgresql/$v/bin/initdb" ] && return 0
  done
  return 1
}

# Optional tools, installed when apt is at hand: ogr2ogr/ogrinfo (GDAL clients for the benchmark and
# the OGC API interoperability test), Chromium (the viewer's browser test), mosquitto (the MQTT
# broker of the live-sensing tests) and pgRouting (road distances of the water-logging scenario).
optional_missing() {
  local pkgs=()
  command -v ogrinfo >/dev/null 2>&1 || pkgs+=(gdal-bin)
  command -v chromium >/dev/null 2>&1 || pkgs+=(chromium fonts-noto-cjk)
  command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || pkgs+=(mosquitto)
  local v
  v=$(ls /usr/lib/postgresql 2>/dev/null | sort -rn | head -n1 || true)
  # pgRouting for the water-logging scenario's road distances (without it: straight-line distances)
  [ -z "$v" ] || [ -f "/usr/share/postgresql/$v/extension/pgrouting.control" ] || pkgs+=("postgresql-$v-pgrouting")
  # Citus's build (scripts/build-citus.sh, the -m citus tests): only when its source lies beside the clone
  if [ -f "$(dirname "$0")/../../shared/vendor/citus-13.2.2.tar.gz" ]; then
    command -v gcc >/dev/null 2>&1 || pkgs+=(gcc make)
    [ -z "$v" ] || [ -f "/usr/include/postgresql/$v/server/postgres.h" ] || pkgs+=("postgresql-server-dev-$v")
    [ -f /usr/include/lz4.h ] || pkgs+=(liblz4-dev)
    [ -f /usr/include/zstd.h ] || pkgs+=(libzstd-dev)
    [ -f /usr/include/krb5.h ] || pkgs+=(libkrb5-dev)
  fi
  echo "${pkgs[@]:-}"
}

if have_postgis && [ -z "$(optional_missing)" ]; then exit 0; fi
if have_postgis && ! command -v apt-get >/dev/null 2>&1; then exit 0; fi
if [ -n "${CIM_DATABASE_URL:-}" ] && [ -n "${CIM_SKIP_SYSTEM_DEPS:-}" ]; then exit 0; fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: PostgreSQL (>= 13) with PostGIS 3 is not installed and this is not a Debian/Ubuntu system." >&2
  echo "Install the PostgreSQL server and its PostGIS 3 extension (e.g. 'postgresql-16' and 'postgis' packages)," >&2
  echo "or point CIM_DATABASE_URL at a server that has PostGIS >= 3.1." >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    have_postgis && exit 0  # only optional tools missing: their tests skip
    echo "error: PostGIS is missing and installing it needs root: run as root or install 'postgresql-NN-postgis-3'." >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
ver=$(ls /usr/lib/postgresql 2>/dev/null | sort -rn | head -n1 || true)
if [ -z "$ver" ]; then
  $SUDO apt-get install -y -qq postgresql >/dev/null
  ver=$(ls /usr/lib/postgresql | sort -rn | head -n1)
fi
if ! have_postgis; then
  $SUDO apt-get install -y -qq "postgresql-$ver-postgis-3" >/dev/null
  have_postgis || { echo "error: postgresql-$ver-postgis-3 installed but postgis.control not found" >&2; exit 1; }
  echo "installed PostGIS for PostgreSQL $ver"
fi
optional=$(optional_missing)
if [ -n "$optional" ]; then
  # optional: a failure here only skips the tests that need them
  $SUDO apt-get install -y -qq $optional >/dev/null || echo "note: could not install $optional (some tests will skip)"
fi
