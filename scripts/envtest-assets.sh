#!/usr/bin/env bash
# envtest-assets.sh [TARGET_DIR]
#
# Produce a controller-runtime "envtest" asset directory (KUBEBUILDER_ASSETS)
# holding executable `etcd` and `kube-apiserver`, using Debian packages only:
#
#   etcd            <- Debian bookworm binary package `etcd-server` (3.4.x),
#                      fetched with `apt-get download` and unpacked (not installed,
#                      so no etcd service gets started).
#   kube-apiserver  <- no Debian suite ships it prebuilt, so it is built from the
#                      Debian bookworm source package `kubernetes`
#                      (1.20.5+really1.20.2-1.1+deb12u1, full upstream tree with
#                      vendor/) with Go 1.15 taken from bullseye's golang-1.15-go /
#                      golang-1.15-src .debs (unpacked into the work dir, nothing
#                      installed system-wide). Offline build: GOPROXY=off, vendored.
#                      Takes ~8-9 minutes on 2 cores.
#
# Idempotent: if both binaries already exist in TARGET_DIR and run, it only prints
# their versions. FORCE=1 rebuilds. KEEP_WORK=1 keeps the build dir.
# Env overrides: DEBIAN_MIRROR (default http://deb.debian.org/debian; falls back
# to http://archive.debian.org/debian for the bullseye Go packages).
#
# Usage: export KUBEBUILDER_ASSETS="$(scripts/envtest-assets.sh | tail -1)"
#        (the last line printed is the asset dir)
set -euo pipefail

TARGET="${1:-${XDG_CACHE_HOME:-$HOME/.cache}/kube-nftpol/envtest}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
ARCHIVE_MIRROR="${ARCHIVE_MIRROR:-http://archive.debian.org/debian}"
FORCE="${FORCE:-0}"
KEEP_WORK="${KEEP_WORK:-0}"

# Pinned inputs (sha256 from the Debian archive indices).
K8S_SRC_DIR="pool/main/k/kubernetes"
K8S_DSC="kubernetes_1.20.5+really1.20.2-1.1+deb12u1.dsc"
K8S_DSC_SHA="19fa1da5aefcef673894ac9511986bd98a14410cf8eea0b626613c30df435257"
K8S_ORIG="kubernetes_1.20.5+really1.20.2.orig.tar.gz"
K8S_ORIG_SHA="b83c0780efb182d928dc63d46488a847f161f04e40a94b96bf5247dd671ecdfc"
K8S_DEB="kubernetes_1.20.5+really1.20.2-1.1+deb12u1.debian.tar.xz"
K8S_DEB_SHA="9b6e5fd41769d2b5badf2e73b274e3bcd90f85e13d06a1a4a845ccce018127d8"
GO_DIR="pool/main/g/golang-1.15"
GO_GO="golang-1.15-go_1.15.15-1~deb11u4_amd64.deb"
GO_GO_SHA="33f6680406698b60370322aa5710be199006b3d66fbb0974b44da012de3aa82a"
GO_SRC="golang-1.15-src_1.15.15-1~deb11u4_amd64.deb"
GO_SRC_SHA="e580f570f706d801191f9a17e55156736fc5979a6a878bab9304ca007ae29941"

log() { printf '[envtest-assets] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ "$(uname -m)" == x86_64 ]] || die "only amd64 is supported (pinned Go .debs are amd64)"

runs() { [[ -x "$1" ]] && "$1" --version >/dev/null 2>&1; }

print_versions() {
  "$TARGET/etcd" --version | sed -n '1p' >&2
  "$TARGET/kube-apiserver" --version >&2
  echo "$TARGET"
}

mkdir -p "$TARGET"
TARGET="$(cd "$TARGET" && pwd)"

if [[ "$FORCE" != 1 ]] && runs "$TARGET/etcd" && runs "$TARGET/kube-apiserver"; then
  log "assets already present in $TARGET"
  print_versions
  exit 0
fi

SUDO=()
if [[ "$(id -u)" != 0 ]]; then
  command -v sudo >/dev/null || die "need root or sudo for apt-get"
  SUDO=(sudo)
fi

APT_UPDATED=0
apt_update_once() {
  if [[ "$APT_UPDATED" == 0 ]]; then
    log "apt-get update"
    "${SUDO[@]}" apt-get update -qq
    APT_UPDATED=1
  fi
}

# Host tools: curl/xz for downloads, dpkg-dev for dpkg-source, make+rsync for
# the kubernetes build scripts (rsync is in the package's Build-Depends).
NEED_PKGS=(curl ca-certificates xz-utils dpkg-dev make rsync)
missing=()
for p in "${NEED_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  apt_update_once
  log "apt-get install ${missing[*]}"
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

WORK="$TARGET/.work"
mkdir -p "$WORK"
cleanup() {
  if [[ "$KEEP_WORK" != 1 ]]; then
    chmod -R u+w "$WORK" 2>/dev/null || true   # Go module cache files are read-only
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT

# fetch <relative pool path> <file> <sha256> [mirror...]
fetch() {
  local dir="$1" file="$2" sha="$3"; shift 3
  local out="$WORK/dl/$file" m
  mkdir -p "$WORK/dl"
  if [[ -f "$out" ]] && echo "$sha  $out" | sha256sum -c --status; then return 0; fi
  for m in "$@"; do
    log "download $m/$dir/$file"
    if curl -fsSL --retry 3 -o "$out.part" "$m/$dir/$file"; then
      if echo "$sha  $out.part" | sha256sum -c --status; then mv "$out.part" "$out"; return 0; fi
      log "checksum mismatch for $file from $m"
    fi
  done
  rm -f "$out.part"
  die "could not fetch $file"
}

# ---------------------------------------------------------------- etcd
if [[ "$FORCE" == 1 ]] || ! runs "$TARGET/etcd"; then
  mkdir -p "$WORK/etcd" && rm -rf "$WORK/etcd/"*
  # apt-get download needs fresh lists; as root it only warns about the
  # unsandboxed download, which is harmless.
  log "apt-get download etcd-server"
  if ! ( cd "$WORK/etcd" && apt-get download -qq etcd-server ) 2>/dev/null; then
    apt_update_once
    ( cd "$WORK/etcd" && apt-get download -qq etcd-server ) 2>&1 | grep -v -i unsandboxed >&2 || true
  fi
  deb="$(ls "$WORK"/etcd/etcd-server_*.deb 2>/dev/null | head -1)"
  [[ -n "$deb" ]] || die "apt-get download etcd-server failed"
  dpkg-deb -x "$deb" "$WORK/etcd/root"
  install -m 0755 "$WORK/etcd/root/usr/bin/etcd" "$TARGET/etcd.new"
  mv -f "$TARGET/etcd.new" "$TARGET/etcd"
  runs "$TARGET/etcd" || die "unpacked etcd does not run"
  log "etcd installed from $(basename "$deb")"
fi

# ---------------------------------------------------------------- kube-apiserver
if [[ "$FORCE" == 1 ]] || ! runs "$TARGET/kube-apiserver"; then
  start=$SECONDS
  # Go 1.15 (what upstream used for 1.20.x); bookworm's Go 1.19 is too new for
  # the 1.20 vendor tree (e.g. modern-go/reflect2 1.0.1 breaks on Go >= 1.18).
  fetch "$GO_DIR" "$GO_GO" "$GO_GO_SHA" "$DEBIAN_MIRROR" "$ARCHIVE_MIRROR"
  fetch "$GO_DIR" "$GO_SRC" "$GO_SRC_SHA" "$DEBIAN_MIRROR" "$ARCHIVE_MIRROR"
  rm -rf "$WORK/go"
  dpkg-deb -x "$WORK/dl/$GO_GO" "$WORK/go"
  dpkg-deb -x "$WORK/dl/$GO_SRC" "$WORK/go"
  GOROOT_DIR="$WORK/go/usr/lib/go-1.15"
  "$GOROOT_DIR/bin/go" version >&2

  fetch "$K8S_SRC_DIR" "$K8S_DSC" "$K8S_DSC_SHA" "$DEBIAN_MIRROR"
  fetch "$K8S_SRC_DIR" "$K8S_ORIG" "$K8S_ORIG_SHA" "$DEBIAN_MIRROR"
  fetch "$K8S_SRC_DIR" "$K8S_DEB" "$K8S_DEB_SHA" "$DEBIAN_MIRROR"
  rm -rf "$WORK/src"
  log "dpkg-source -x $K8S_DSC"
  ( cd "$WORK/dl" && dpkg-source -q -x "$K8S_DSC" "$WORK/src" ) >&2

  log "building cmd/kube-apiserver (make WHAT=cmd/kube-apiserver, ~8 min on 2 cores)"
  mkdir -p "$WORK/home" "$WORK/gopath" "$WORK/gocache"
  (
    cd "$WORK/src"
    # The 1.20 build scripts run in GOPATH mode (hack/lib/init.sh sets
    # GO111MODULE=off) against the vendor/ tree; nothing is downloaded.
    env -u GOFLAGS -u GO111MODULE \
      GOROOT="$GOROOT_DIR" PATH="$GOROOT_DIR/bin:$PATH" \
      GOPATH="$WORK/gopath" GOCACHE="$WORK/gocache" HOME="$WORK/home" \
      GOPROXY=off GOSUMDB=off GOTOOLCHAIN=local CGO_ENABLED=0 \
      make WHAT=cmd/kube-apiserver
  ) > "$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log" >&2; KEEP_WORK=1; die "build failed (log: $WORK/build.log)"; }
  install -m 0755 "$WORK/src/_output/bin/kube-apiserver" "$TARGET/kube-apiserver.new"
  mv -f "$TARGET/kube-apiserver.new" "$TARGET/kube-apiserver"
  runs "$TARGET/kube-apiserver" || die "built kube-apiserver does not run"
  log "kube-apiserver built in $((SECONDS - start)) s"
fi

print_versions
