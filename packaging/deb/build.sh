#!/usr/bin/env bash
# packaging/deb/build.sh [--binary PATH] [--out DIR] [--compress xz|gzip|none]
#
# Builds kube-nftpol_VERSION_ARCH.deb with dpkg-deb alone (no debhelper, no cargo-deb: nothing
# to install on a Debian 12 that builds the project). `make deb` runs it.
#
#   --binary PATH  package this binary instead of building one; the default is
#                  `cargo build --locked --release` and target/release/kube-nftpol. The test
#                  (packaging/deb/test.sh) packages the debug binary the test suite built.
#   --out DIR      where the .deb goes (default target/deb)
#   --compress     dpkg-deb's compressor (default xz; the test uses none)
#
# The binary is copied with its debug sections stripped (symbols stay, so backtraces keep
# function names). Depends comes from dpkg-shlibdeps when dpkg-dev is installed (versioned:
# the glibc the binary was linked against), else from a fixed list. The last line printed is
# the path of the .deb.
#
# What the package installs and does: packaging/README.md.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
here="$repo/packaging/deb"
binary=""
out="$repo/target/deb"
compress=xz
while (($#)); do
  case "$1" in
    --binary) binary=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --compress) compress=$2; shift 2 ;;
    *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

if [[ -z $binary ]]; then
  (cd "$repo" && cargo build --locked --release)
  binary="$repo/target/release/kube-nftpol"
fi
[[ -x $binary ]] || { echo "build.sh: $binary is not an executable" >&2; exit 2; }

version=$("$binary" --version | awk '{print $2}')
arch=$(dpkg --print-architecture)
[[ -n $version ]] || { echo "build.sh: cannot read the version of $binary" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# debian/kube-nftpol is where dpkg-shlibdeps expects the package's files.
root="$work/debian/kube-nftpol"
install -d -m 0755 "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" \
  "$root/etc/default" "$root/usr/share/doc/kube-nftpol"

if command -v strip >/dev/null; then
  strip --strip-debug -o "$root/usr/bin/kube-nftpol" "$binary"
else
  echo "build.sh: strip not found (binutils): packaging the binary unstripped" >&2
  cp "$binary" "$root/usr/bin/kube-nftpol"
fi
chmod 0755 "$root/usr/bin/kube-nftpol"
install -m 0644 "$repo/systemd/kube-nftpol.service" "$root/lib/systemd/system/kube-nftpol.service"
install -m 0644 "$repo/systemd/kube-nftpol.env" "$root/etc/default/kube-nftpol"
install -m 0644 "$repo/README.md" "$repo/docs/metrics.md" "$root/usr/share/doc/kube-nftpol/"
cat >"$root/usr/share/doc/kube-nftpol/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: kube-nftpol

Files: *
Copyright: $(date +%Y) the kube-nftpol developers
License: Apache-2.0
 On Debian systems the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
EOF
chmod 0644 "$root/usr/share/doc/kube-nftpol/copyright"
# A native package's changelog: one entry for the version packaged.
printf '%s\n' "kube-nftpol ($version) unstable; urgency=medium" "" \
  "  * Built from the kube-nftpol repository by packaging/deb/build.sh." "" \
  " -- ${DEB_MAINTAINER:-kube-nftpol maintainers <maintainers@kube-nftpol.invalid>}  $(date -R)" |
  gzip -9n >"$root/usr/share/doc/kube-nftpol/changelog.gz"
chmod 0644 "$root/usr/share/doc/kube-nftpol/changelog.gz"
for script in postinst prerm postrm; do
  install -m 0755 "$here/$script" "$root/DEBIAN/$script"
done
# Edits of the admin survive upgrades; purge removes it.
echo /etc/default/kube-nftpol >"$root/DEBIAN/conffiles"

# nftables: postrm purge deletes the table with nft (the binary is gone by then).
shlibs=""
if command -v dpkg-shlibdeps >/dev/null; then
  printf 'Source: kube-nftpol\n\nPackage: kube-nftpol\nArchitecture: any\n' >"$work/debian/control"
  shlibs=$(cd "$work" && dpkg-shlibdeps -O "debian/kube-nftpol/usr/bin/kube-nftpol" 2>/dev/null |
    sed -n 's/^shlibs:Depends=//p')
fi
if [[ -z $shlibs ]]; then
  # What `ldd` shows on Debian 12 (libnftnl, libmnl, libgcc_s, libc/libm, glibc 2.34 symbols).
  shlibs="libc6 (>= 2.34), libgcc-s1, libmnl0, libnftnl11"
fi
rm -f "$work/debian/control"

installed_size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<EOF
Package: kube-nftpol
Version: $version
Architecture: $arch
Maintainer: ${DEB_MAINTAINER:-kube-nftpol maintainers <maintainers@kube-nftpol.invalid>}
Installed-Size: $installed_size
Depends: $shlibs, nftables
Recommends: kmod
Section: net
Priority: optional
Description: Kubernetes NetworkPolicy enforcement in nftables (Flannel clusters)
 kube-nftpol compiles the NetworkPolicies, pods and namespaces of a Kubernetes
 cluster into one nftables table per node (inet kube-nftpol), kept in line with
 the API server (or a directory of manifests), one atomic transaction a change.
 .
 The service (kube-nftpol.service) is neither enabled nor started on
 installation: configure /etc/default/kube-nftpol, then run
 systemctl enable --now kube-nftpol. Stopping or removing it leaves the
 rules in force; purging the package deletes the table.
EOF
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z |
  xargs -0 md5sum) >"$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/conffiles" "$root/DEBIAN/md5sums"

mkdir -p "$out"
deb="$out/kube-nftpol_${version}_${arch}.deb"
dpkg-deb --root-owner-group "-Z$compress" --build "$root" "$deb" >/dev/null
echo "$deb"
