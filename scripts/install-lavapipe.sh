#!/usr/bin/env bash
# Installs lavapipe (Mesa's software Vulkan device) from Debian bookworm-backports: Mesa 25, the first version
# Dawn (the `webgpu` package) accepts; bookworm's own Mesa 22 lacks shaderUniform*ArrayDynamicIndexing.
# Used by .ci/run so the webgpu tests have an adapter. Idempotent, quiet; exits non-zero with a message when it
# cannot install (never a silent skip). Debian bookworm only; needs root (or sudo) and apt.
set -euo pipefail

say() { echo "install-lavapipe: $*" >&2; }
die() { say "$*"; exit 1; }

ICD_GLOB='/usr/share/vulkan/icd.d/lvp_icd*.json'
mesa_major() { dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null | sed -E 's/^([0-9]+:)?([0-9]+).*/\2/'; }

# Already there (Mesa >= 25 with the lavapipe ICD): nothing to do.
if [ "$(mesa_major || true)" != "" ] && [ "$(mesa_major)" -ge 25 ] && compgen -G "$ICD_GLOB" >/dev/null; then
  exit 0
fi

SUDO=''
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || die "not root and no sudo: install mesa-vulkan-drivers (>= 25, bookworm-backports) by hand"
  SUDO='sudo -n'
fi
command -v apt-get >/dev/null || die "apt-get not found: lavapipe is installed from Debian's packages (bookworm-backports)"
. /etc/os-release
[ "${VERSION_CODENAME:-}" = bookworm ] || die "this is ${PRETTY_NAME:-an unknown OS}, not Debian bookworm: install Mesa >= 25's mesa-vulkan-drivers (lavapipe) from your distribution"

# Add bookworm-backports to the Debian source the machine already uses (same URI and keyring).
BACKPORTS=/etc/apt/sources.list.d/mgllava-bookworm-backports.sources
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  SRC=$(grep -lsE '^Suites:.*\bbookworm\b' /etc/apt/sources.list.d/*.sources | head -n1 || true)
  if [ -n "$SRC" ]; then
    URI=$(awk '/^URIs:/ {print $2; exit}' "$SRC")
    KEY=$(awk '/^Signed-By:/ {print $2; exit}' "$SRC")
  else
    URI=$(awk '$1 == "deb" && $0 ~ / bookworm / {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}' /etc/apt/sources.list 2>/dev/null || true)
    KEY=/usr/share/keyrings/debian-archive-keyring.gpg
  fi
  [ -n "${URI:-}" ] || die "no Debian bookworm apt source found to add bookworm-backports to"
  printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: %s\n' "$URI" "${KEY:-/usr/share/keyrings/debian-archive-keyring.gpg}" \
    | $SUDO tee "$BACKPORTS" >/dev/null
fi

LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >"$LOG" 2>&1 || { cat "$LOG" >&2; die "apt-get update failed"; }
$SUDO apt-get install -y -qq -t bookworm-backports --no-install-recommends mesa-vulkan-drivers >"$LOG" 2>&1 \
  || { tail -n 30 "$LOG" >&2; die "apt-get install -t bookworm-backports mesa-vulkan-drivers failed"; }
[ "$(mesa_major)" -ge 25 ] || die "mesa-vulkan-drivers $(dpkg-query -W -f='${Version}' mesa-vulkan-drivers) installed, but Dawn needs Mesa >= 25"
compgen -G "$ICD_GLOB" >/dev/null || die "mesa-vulkan-drivers installed but no lavapipe ICD ($ICD_GLOB)"
say "lavapipe installed (mesa-vulkan-drivers $(dpkg-query -W -f='${Version}' mesa-vulkan-drivers))"
