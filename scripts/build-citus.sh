#!/usr/bin/env bash
# Builds the Citus extension (coordinator + workers, `cim db up --workers N`) from its source archive in
# ../shared/vendor/ into .cache/citus/<version>/, once: a no-op when already built. Nothing goes into the
# system's PostgreSQL directories (other clusters on the machine share them): `make install` runs with
# DESTDIR=.cache/citus/<version>/stage, and cim/citus.py assembles a private copy of the PostgreSQL
# installation around it (see docs/citus.md, "How the build is used").
#
# Without the archive (a user's clone) this is a no-op with a note and the `-m citus` tests skip; with it but
# without a compiler or the PostgreSQL server headers it stops with a note, and the tests skip — except in CI
# (CI=1), where a missing tool is an error, so a broken set-up cannot pass as skips.
# Steps as in ../shared/vendor/README.md. --without-libcurl: no anonymous usage reports to citusdata.com.
set -euo pipefail

VERSION=13.2.2
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ARCHIVE="${CIM_VENDOR_DIR:-$ROOT/../shared/vendor}/citus-$VERSION.tar.gz"
CACHE="$ROOT/.cache/citus"
DEST="$CACHE/$VERSION"
STAMP="$DEST/.built"

[ -f "$STAMP" ] && exit 0
if [ ! -f "$ARCHIVE" ]; then
  echo "note: $ARCHIVE not present: Citus is not built (the -m citus tests skip)"
  exit 0
fi

missing=()
command -v gcc >/dev/null || missing+=(gcc)
command -v make >/dev/null || missing+=(make)
command -v pg_config >/dev/null || missing+=(pg_config)
if command -v pg_config >/dev/null; then
  [ -f "$(pg_config --includedir-server)/postgres.h" ] || missing+=("postgresql-server-dev-$(pg_config --version | sed -E 's/[^0-9]*([0-9]+).*/\1/')")
fi
for header in lz4.h zstd.h krb5.h; do
  [ -f "/usr/include/$header" ] || missing+=("$header (liblz4-dev libzstd-dev libkrb5-dev)")
done
if [ ${#missing[@]} -gt 0 ]; then
  msg="Citus $VERSION not built: missing build tools: ${missing[*]} (Debian: apt-get install postgresql-server-dev-15 libkrb5-dev liblz4-dev libzstd-dev)"
  if [ -n "${CI:-}" ]; then echo "error: $msg" >&2; exit 1; fi
  echo "note: $msg; the -m citus tests skip"
  exit 0
fi

mkdir -p "$CACHE"
# two builds at once (make and a test run) must not write the same folder: the second waits, then finds it built
exec 9>"$CACHE/.build.lock"
command -v flock >/dev/null && flock 9
[ -f "$STAMP" ] && exit 0

echo "building Citus $VERSION into $DEST (about 3 minutes on 2 cores)"
WORK="$(mktemp -d "$CACHE/.build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
tar xzf "$ARCHIVE" -C "$WORK"
cd "$WORK/citus-$VERSION"
# PostgreSQL 15.14+ exports have_createdb_privilege() (backported from 16), which Citus 13.2.2 still defines
# for 15 as a static function: the two clash. Use the server's when its header declares it (same body).
if grep -q "extern bool have_createdb_privilege" "$(pg_config --includedir-server)/commands/dbcommands.h"; then
  perl -0pi -e 's/static inline bool\nhave_createdb_privilege\(void\)\n\{.*?\n\}\n//s' src/include/pg_version_compat.h
  ! grep -q "^have_createdb_privilege(void)" src/include/pg_version_compat.h \
    || { echo "error: could not patch pg_version_compat.h for this PostgreSQL" >&2; exit 1; }
fi
./configure --without-libcurl >"$WORK/configure.log" 2>&1 || { tail -30 "$WORK/configure.log" >&2; exit 1; }
# with_llvm=no: no JIT bitcode (jit is off in every base, and it doubles the build time)
make -j"$(nproc)" with_llvm=no >"$WORK/make.log" 2>&1 || { tail -40 "$WORK/make.log" >&2; exit 1; }
rm -rf "$DEST"
make install with_llvm=no DESTDIR="$DEST/stage" >"$WORK/install.log" 2>&1 || { tail -20 "$WORK/install.log" >&2; exit 1; }
# where pg_config put the files inside the stage: cim/citus.py reads these two lines
{
  echo "pkglibdir=$(pg_config --pkglibdir)"
  echo "sharedir=$(pg_config --sharedir)"
  echo "bindir=$(pg_config --bindir)"
} >"$DEST/paths"
touch "$STAMP"
echo "Citus $VERSION built into $DEST (used by 'cim db up --workers N')"
