#!/usr/bin/env bash
# Installs what building and testing kube-nftpol needs on Debian/Ubuntu, if it is missing.
# Idempotent and quiet when everything is there. Needs root (or sudo) only to install.
set -euo pipefail

packages=(nftables iproute2 util-linux procps openssl pkg-config libnftnl-dev libmnl-dev systemd)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

command -v cargo >/dev/null || { echo "install-deps: cargo not found: install Rust (https://rustup.rs)"; exit 1; }
