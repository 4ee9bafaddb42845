#!/usr/bin/env bash
# Idempotent setup: system packages (when root on Debian) and the project virtualenv.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.bootstrap-stamp"

# Debian package -> a file it provides, used to tell whether it is installed.
declare -A PROVIDES=(
  [postgresql]="/usr/lib/postgresql/15/bin/initdb"
  [prometheus]="/usr/bin/promtool"
  [poppler-utils]="/usr/bin/pdftoppm"
  [wrk]="/usr/bin/wrk"
  [fonts-dejavu-core]="/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
)
# Services that Debian starts on install; the project never relies on them.
declare -A SERVICES=(
  [postgresql]="postgresql"
  [prometheus]="prometheus"
)

log() { printf 'bootstrap: %s\n' "$*" >&2; }

is_installed() {
  local pkg="$1"
  if command -v dpkg-query >/dev/null 2>&1; then
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' && return 0
  fi
  [[ -n "${PROVIDES[$pkg]:-}" && -e "${PROVIDES[$pkg]}" ]]
}

service_running() {
  local svc="$1"
  command -v service >/dev/null 2>&1 && service "$svc" status >/dev/null 2>&1
}

stop_service() {
  local svc="$1"
  if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now "$svc" >/dev/null 2>&1 || true
  elif command -v service >/dev/null 2>&1; then
    service "$svc" stop >/dev/null 2>&1 || true
    if command -v update-rc.d >/dev/null 2>&1; then
      update-rc.d "$svc" disable >/dev/null 2>&1 || true
    fi
  fi
}

install_system_packages() {
  local missing=() pkg
  for pkg in postgresql prometheus poppler-utils wrk fonts-dejavu-core; do
    is_installed "$pkg" || missing+=("$pkg")
  done
  if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing+=(python3-venv)
  fi
  if ((${#missing[@]} == 0)); then
    return 0
  fi
  if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    log "missing system packages (install them as root): ${missing[*]}"
    return 0
  fi

  local -A was_running=()
  local svc
  for pkg in "${missing[@]}"; do
    svc="${SERVICES[$pkg]:-}"
    if [[ -n "$svc" ]] && service_running "$svc"; then
      was_running[$svc]=1
    fi
  done

  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null

  for pkg in "${missing[@]}"; do
    svc="${SERVICES[$pkg]:-}"
    if [[ -n "$svc" && -z "${was_running[$svc]:-}" ]]; then
      stop_service "$svc"
    fi
  done
}

setup_venv() {
  if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating $VENV"
    "$PYTHON" -m venv "$VENV"
    rm -f "$STAMP"
  fi
  if [[ ! -f "$STAMP" || pyproject.toml -nt "$STAMP" ]]; then
    log "installing the project into $VENV"
    "$VENV/bin/python" -m pip install -q -e '.[test]'
    touch "$STAMP"
  fi
}

install_system_packages
setup_venv
