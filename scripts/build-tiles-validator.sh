#!/usr/bin/env bash
# Builds the CesiumGS 3D Tiles validator (it is not on the npm registry) from its source archive in
# ../shared/vendor/ into .cache/3d-tiles-validator-<version>/, once: a no-op when already built. The tile
# tests run it on every 3D layer's tileset; without the archive (a user's clone) they skip, and so does
# this script (exit 0 with a note). The archive is read where it lies, never copied into the repository.
# Steps as in ../shared/vendor/README.md; needs node >= 18 and npm.
set -euo pipefail

VERSION=0.6.1
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ARCHIVE="${CIM_VENDOR_DIR:-$ROOT/../shared/vendor}/3d-tiles-validator-$VERSION.tar.gz"
CACHE="$ROOT/.cache"
DEST="$CACHE/3d-tiles-validator-$VERSION"
STAMP="$DEST/.built"

[ -f "$STAMP" ] && exit 0
if [ ! -f "$ARCHIVE" ]; then
  echo "note: $ARCHIVE not present: the 3D Tiles validator is not built (its tests skip)"
  exit 0
fi
command -v npm >/dev/null || { echo "error: npm is needed to build the 3D Tiles validator" >&2; exit 1; }

mkdir -p "$CACHE"
# two builds at once (make and a test run) must not write the same folder: the second waits, then finds it built
exec 9>"$CACHE/.3d-tiles-validator.lock"
command -v flock >/dev/null && flock 9
[ -f "$STAMP" ] && exit 0

echo "building the 3D Tiles validator $VERSION into $DEST (about a minute)"
WORK="$(mktemp -d "$CACHE/.3d-tiles-validator-build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
tar xzf "$ARCHIVE" -C "$WORK"
cd "$WORK/3d-tiles-validator-$VERSION"
# 3d-tiles-tools 0.5.0 pins a sharp that no longer builds; 0.5.4 is the same API
sed -i 's/"3d-tiles-tools": "0.5.0"/"3d-tiles-tools": "0.5.4"/' package.json
npm install --ignore-scripts --no-audit --no-fund --loglevel=error
# tsc reports type errors from a newer @types/node but writes build/ all the same: judge by its output
npx tsc >"$WORK/tsc.log" 2>&1 || true
[ -f build/main.js ] || { cat "$WORK/tsc.log" >&2; echo "error: tsc wrote no build/main.js" >&2; exit 1; }
# the prebuilt image library sharp needs (install scripts are off, so fetch its binaries as packages)
npm install --ignore-scripts --no-audit --no-fund --loglevel=error \
  sharp@0.33.5 @img/sharp-linux-x64@0.33.5 @img/sharp-libvips-linux-x64@1.0.4
rm -rf "$DEST"
mv "$WORK/3d-tiles-validator-$VERSION" "$DEST"
touch "$STAMP"
echo "3D Tiles validator built: node $DEST/build/main --tilesetFile …/tileset.json"
