#!/usr/bin/env bash
# make deb: builds the Debian package from a copy of the source tree in OUT (default build-deb/), so the
# worktree stays clean and dpkg-buildpackage's ../ lands inside OUT. Prints the path of the .deb.
#   deploy/build-deb.sh [OUT]      DEB_BUILD_OPTIONS defaults to "nocheck parallel=$(nproc)"
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/build-deb}
version=$(dpkg-parsechangelog -l "$root/debian/changelog" -S Version)
src=$out/ttshub-$version
rm -rf "$src" "$out"/ttshub_*
mkdir -p "$src"
# the tree without build directories, VCS data or npm modules (the same list as .dockerignore)
tar -C "$root" --exclude-vcs --exclude='./build*' --exclude='./obj-*' --exclude='node_modules' \
    --exclude='./debian/ttshub' --exclude='./debian/.debhelper' -cf - . | tar -C "$src" -xf -
export DEB_BUILD_OPTIONS=${DEB_BUILD_OPTIONS:-"nocheck parallel=$(nproc)"}
(cd "$src" && dpkg-buildpackage -b -us -uc >"$out/build.log" 2>&1) || {
  tail -n 60 "$out/build.log" >&2
  exit 1
}
ls "$out"/ttshub_"$version"_*.deb
