#!/usr/bin/env bash
# Makes the Debian bookworm base image that the Containerfiles' `FROM debian:bookworm-slim` resolves to here,
# where no image registry is reachable: mmdebstrap (or debootstrap) --variant=minbase from the machine's own
# Debian mirror, imported as localhost/debian:bookworm and tagged docker.io/library/debian:bookworm-slim.
# The root filesystem tarball is cached in $TTSHUB_DEPLOY_CACHE (default /var/cache/ttshub-deploy) and
# rebuilt after 14 days. A base that a registry provided (no localhost/ tag) is left alone.
set -euo pipefail
cache=${TTSHUB_DEPLOY_CACHE:-/var/cache/ttshub-deploy}
tarball=$cache/debian-bookworm-minbase.tar
slim=docker.io/library/debian:bookworm-slim
if podman image exists "$slim" && ! podman image exists localhost/debian:bookworm; then
  exit 0 # a real debian:bookworm-slim is here already
fi
if ! podman image exists localhost/debian:bookworm; then
  mkdir -p "$cache"
  if [ ! -s "$tarball" ] || [ -n "$(find "$tarball" -mtime +14)" ]; then
    # the machine's own mirror: the first deb URI of its apt sources (deb822 or one-line format)
    mirror=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null |
      grep -v security | head -n1 || true)
    [ -n "$mirror" ] || mirror=$(awk '$1=="deb" && $2 !~ /security/ {print $2; exit}' \
      /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
    [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
    sec=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*security[^[:space:]]*\).*/\1/p' \
      /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1 || true)
    [ -n "$sec" ] || sec=http://deb.debian.org/debian-security
    root=$(mktemp -d "$cache/rootfs.XXXXXX")
    trap 'rm -rf "$root"' EXIT
    chmod 0755 "$root" # the image's /
    if command -v mmdebstrap >/dev/null 2>&1; then
      # mmdebstrap: apt inside, dpkg without fsyncs (removed after the build), the point releases and the
      # security fixes at once, and less work than debootstrap's shell loop
      echo "base-image: mmdebstrap bookworm from $mirror (about a minute)"
      # merged /usr as debootstrap does it (usr-is-merged, not usrmerge, which would pull in perl); no docs,
      # man pages or translations, like the registry's slim image
      hooks=()
      [ -d /usr/share/mmdebstrap/hooks/merged-usr ] && hooks=(--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr)
      mmdebstrap --variant=minbase --mode=root --format=directory --dpkgopt=force-unsafe-io "${hooks[@]}" \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        bookworm "$root" "deb $mirror bookworm main" "deb $mirror bookworm-updates main" \
        "deb $sec bookworm-security main" >"$cache/debootstrap.log" 2>&1 || {
        tail -n 30 "$cache/debootstrap.log" >&2
        exit 1
      }
      rm -f "$root/etc/dpkg/dpkg.cfg.d/99mmdebstrap"
    else
      echo "base-image: debootstrap bookworm from $mirror (a few minutes)"
      debootstrap --variant=minbase bookworm "$root" "$mirror" >"$cache/debootstrap.log" 2>&1 || {
        tail -n 30 "$cache/debootstrap.log" >&2
        exit 1
      }
    fi
    rm -f "$root/etc/apt/sources.list"
    cat >"$root/etc/apt/sources.list.d/debian.sources" <<SRC
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $sec
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    # like the registry's slim image: packages installed later skip docs, man pages and translations
    mkdir -p "$root/etc/dpkg/dpkg.cfg.d"
    printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
      'path-exclude /usr/share/man/*' 'path-exclude /usr/share/groff/*' 'path-exclude /usr/share/info/*' \
      'path-exclude /usr/share/lintian/*' 'path-exclude /usr/share/linda/*' 'path-exclude /usr/share/locale/*' \
      >"$root/etc/dpkg/dpkg.cfg.d/docker"
    # what the registry's slim image also leaves out
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
      "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/var/log/*.log
    tar --numeric-owner -C "$root" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$root"
    trap - EXIT
  fi
  podman import --change 'CMD ["/bin/bash"]' "$tarball" localhost/debian:bookworm >/dev/null
fi
podman tag localhost/debian:bookworm "$slim"
podman tag localhost/debian:bookworm docker.io/library/debian:bookworm
