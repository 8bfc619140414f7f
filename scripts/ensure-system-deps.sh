#!/usr/bin/env bash
# Install the Debian packages listed in $1 whose command is missing.
# Idempotent: does nothing (and needs no network) when everything is present.
set -euo pipefail
list="${1:-scripts/system-deps.txt}"
missing=()
while read -r pkg cmd; do
  [[ -z "${pkg}" || "${pkg}" == \#* ]] && continue
  if [[ "${cmd}" == "-" ]]; then
    dpkg -s "${pkg}" >/dev/null 2>&1 || missing+=("${pkg}")
  elif ! command -v "${cmd:-$pkg}" >/dev/null 2>&1; then
    missing+=("${pkg}")
  fi
done < "${list}"
if (( ${#missing[@]} == 0 )); then
  exit 0
fi
echo "installing Debian packages: ${missing[*]}"
SUDO=""
if [[ "$(id -u)" != 0 ]]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
${SUDO} apt-get update -qq
${SUDO} apt-get install -y -qq --no-install-recommends "${missing[@]}"
