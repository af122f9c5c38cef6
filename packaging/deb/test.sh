#!/usr/bin/env bash
# packaging/deb/test.sh BINARY
#
# Builds the .deb around BINARY (build.sh --binary; the test suite passes its debug build)
# and puts it through dpkg for real on this machine: install, reinstall over an edited
# conffile, remove, purge (from removed and from installed), checking the files, the
# conffile, Depends against `ldd BINARY`, the unit (`systemd-analyze verify`, when systemd is
# installed), and that a purge deletes table inet kube-nftpol and nothing else, and not at
# all while another kube-nftpol runs in the same network namespace.
#
# Every dpkg command runs inside a scratch network namespace, so the maintainer scripts'
# nft commands meet only the tables this script made there: the host's firewall is never
# touched. The package is purged at the end whatever happens, so the machine is left as it
# was found; if kube-nftpol is installed already, the script touches nothing and skips.
#
# Exit status: 0 passed, 1 failed, 77 skipped (the reason is the last line printed).
# Needs root, dpkg, nft and ip (iproute2). tests/packaging.rs runs it.
set -euo pipefail

binary=${1:?usage: test.sh BINARY}
repo=$(cd "$(dirname "$0")/../.." && pwd)
pkg=kube-nftpol

skip() { echo "skipped: $*"; exit 77; }
fail() { echo "FAILED: $*"; exit 1; }
ok() { echo "ok: $*"; }

[[ $(id -u) -eq 0 ]] || skip "not root"
for c in dpkg dpkg-deb dpkg-query nft ip; do
  command -v "$c" >/dev/null || skip "$c not found"
done
state=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
[[ -z $state || $state == not-installed ]] ||
  skip "$pkg is $state on this machine: not touching it"

work=$(mktemp -d)
ns="knp-deb-$$"
fakes=()
cleanup() {
  local rc=$?
  for pid in "${fakes[@]}"; do kill "$pid" 2>/dev/null || true; done
  local s
  s=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
  if [[ -n $s && $s != not-installed ]]; then
    echo "cleanup: purging $pkg ($s)"
    if ip netns list | grep -qw "$ns"; then
      ip netns exec "$ns" dpkg --purge "$pkg" >>"$work/dpkg.log" 2>&1 || true
    else
      unshare --net dpkg --purge "$pkg" >>"$work/dpkg.log" 2>&1 || true
    fi
  fi
  ip netns del "$ns" 2>/dev/null || true
  if ((rc != 0 && rc != 77)) && [[ -s $work/dpkg.log ]]; then
    echo "--- dpkg output"
    cat "$work/dpkg.log"
  fi
  rm -rf "$work"
}
trap cleanup EXIT

ip netns add "$ns"
in_ns() { ip netns exec "$ns" "$@"; }
# dpkg in the scratch namespace; its output goes to the log (shown on failure) and to $work/out.
dpkg_ns() {
  echo "+ dpkg $*" >>"$work/dpkg.log"
  in_ns dpkg --force-unsafe-io "$@" >"$work/out" 2>&1 || { cat "$work/out" >>"$work/dpkg.log"; fail "dpkg $*"; }
  cat "$work/out" >>"$work/dpkg.log"
}
status() { dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || echo not-installed; }
tables() { in_ns nft list tables | sort | tr '\n' ';'; }

# --- build -------------------------------------------------------------------------------
deb=$("$repo/packaging/deb/build.sh" --binary "$binary" --out "$work" --compress none | tail -1)
[[ -f $deb ]] || fail "build.sh made no .deb"
version=$("$binary" --version | awk '{print $2}')
[[ $(dpkg-deb -f "$deb" Package) == "$pkg" && $(dpkg-deb -f "$deb" Version) == "$version" ]] ||
  fail "control: $(dpkg-deb -f "$deb" Package Version)"
ok "built $(basename "$deb")"

want_files="./etc/default/kube-nftpol
./lib/systemd/system/kube-nftpol.service
./usr/bin/kube-nftpol
./usr/share/doc/kube-nftpol/README.md
./usr/share/doc/kube-nftpol/changelog.gz
./usr/share/doc/kube-nftpol/copyright
./usr/share/doc/kube-nftpol/metrics.md"
got_files=$(dpkg-deb -c "$deb" | awk '$1 !~ /^d/ {print $6}' | sort)
[[ $got_files == "$want_files" ]] || fail "files in the .deb: $got_files"
[[ $(dpkg-deb -I "$deb" conffiles) == /etc/default/kube-nftpol ]] || fail "conffiles"
dpkg-deb -c "$deb" | awk '{print $1, $2, $6}' | grep -qx -- '-rwxr-xr-x root/root ./usr/bin/kube-nftpol' ||
  fail "binary mode/owner: $(dpkg-deb -c "$deb" | grep usr/bin)"
ok "files, modes and conffiles"

# Every shared library the binary loads belongs to a package named in Depends.
depends=$(dpkg-deb -f "$deb" Depends)
deps=" $(echo "$depends" | tr ',' '\n' | sed 's/(.*)//; s/|.*//' | tr -d ' ' | tr '\n' ' ') "
owner() {
  local p=$1 alt
  for alt in "$p" "$(readlink -f "$p")" "${p#/usr}" "/usr$p"; do
    dpkg-query -S "$alt" 2>/dev/null | head -1 | cut -d: -f1 && return 0
  done
  return 1
}
for lib in $(ldd "$binary" | grep -o '/[^ ]*'); do
  package=$(owner "$lib") || fail "no package owns $lib"
  [[ $deps == *" $package "* ]] || fail "$lib is in $package, which Depends ($depends) lacks"
done
[[ $deps == *" nftables "* ]] || fail "Depends lacks nftables (postrm purge uses nft)"
for d in $deps; do
  [[ $(dpkg-query -W -f='${db:Status-Status}' "$d" 2>/dev/null) == installed ]] ||
    skip "dependency $d is not installed"
done
ok "Depends ($depends) covers ldd"

# --- install -----------------------------------------------------------------------------
dpkg_ns --install "$deb"
[[ $(status) == installed ]] || fail "status after install: $(status)"
grep -q "not enabled" "$work/out" || fail "postinst did not say the service is not enabled"
[[ $(/usr/bin/kube-nftpol --version) == "kube-nftpol $version" ]] || fail "installed binary"
cmp -s /etc/default/kube-nftpol "$repo/systemd/kube-nftpol.env" || fail "/etc/default/kube-nftpol"
cmp -s /lib/systemd/system/kube-nftpol.service "$repo/systemd/kube-nftpol.service" || fail "unit"
[[ $(stat -c %a /etc/default/kube-nftpol) == 644 ]] || fail "conffile mode"
dpkg-query -W -f='${Conffiles}\n' "$pkg" | grep -q '^ /etc/default/kube-nftpol ' ||
  fail "conffile not registered"
links=$(find /etc/systemd/system -name kube-nftpol.service 2>/dev/null || true)
[[ -z $links ]] || fail "installation enabled the unit: $links"
ok "installed: binary runs, unit and conffile in place, nothing enabled"

if command -v systemd-analyze >/dev/null; then
  out=$(systemd-analyze verify /lib/systemd/system/kube-nftpol.service 2>&1) ||
    fail "systemd-analyze verify: $out"
  if grep -q kube-nftpol <<<"$out"; then fail "systemd-analyze verify: $out"; fi
  ok "systemd-analyze verify of the installed unit"
else
  echo "skipped: systemd-analyze not installed (no verify of the installed unit)"
fi

# --- reinstall over an edited conffile (the upgrade path of the maintainer scripts) -------
echo "# edited by test.sh" >>/etc/default/kube-nftpol
dpkg_ns --install "$deb"
[[ $(status) == installed ]] || fail "status after reinstall: $(status)"
tail -1 /etc/default/kube-nftpol | grep -qx "# edited by test.sh" || fail "reinstall lost the admin's edit"
! grep -q "not enabled" "$work/out" || fail "postinst treated the upgrade as a first install"
ok "reinstall keeps the edited conffile"

# --- remove: the rules stay ----------------------------------------------------------------
in_ns nft -f - <<'EOF' || fail "cannot create tables in the scratch namespace"
table inet kube-nftpol {
  chain input { type filter hook input priority 0; policy accept; }
}
table inet other {
  chain input { type filter hook input priority 0; policy accept; }
}
table ip filter {
}
EOF
before=$(tables)
[[ $before == *"table inet kube-nftpol;"* && $before == *"table inet other;"* ]] || fail "setup: $before"
dpkg_ns --remove "$pkg"
[[ $(status) == config-files ]] || fail "status after remove: $(status)"
[[ ! -e /usr/bin/kube-nftpol && ! -e /lib/systemd/system/kube-nftpol.service ]] || fail "remove left files"
[[ -f /etc/default/kube-nftpol ]] || fail "remove deleted the conffile"
[[ $(tables) == "$before" ]] || fail "remove changed the tables: $(tables)"
grep -q "stays in force" "$work/out" || fail "prerm did not say the rules stay"
ok "remove: files gone, conffile and every table kept"

# --- purge while another kube-nftpol runs in the namespace: its table stays ----------------
cp "$(command -v sleep)" "$work/kube-nftpol"
# (ip netns exec execs the program: $! is the fake itself.)
ip netns exec "$ns" "$work/kube-nftpol" 120 &
fakes+=($!)
for _ in $(seq 50); do
  [[ $(cat "/proc/${fakes[0]}/comm" 2>/dev/null) == kube-nftpol ]] && break
  sleep 0.1
done
dpkg_ns --purge "$pkg"
[[ $(status) == not-installed ]] || fail "status after purge: $(status)"
[[ ! -e /etc/default/kube-nftpol ]] || fail "purge left /etc/default/kube-nftpol"
[[ $(tables) == "$before" ]] || fail "purge deleted a table another kube-nftpol owns: $(tables)"
grep -q "another kube-nftpol runs" "$work/out" || fail "postrm did not say why the table stays"
kill "${fakes[@]}"
wait "${fakes[@]}" 2>/dev/null || true
fakes=()
ok "purge leaves the table of another kube-nftpol running in the namespace"

# --- install, purge at once: table inet kube-nftpol goes, nothing else --------------------
# A kube-nftpol in another network namespace (here: the host's) owns nothing of ours.
"$work/kube-nftpol" 120 &
fakes+=($!)
dpkg_ns --install "$deb"
dpkg_ns --purge "$pkg"
[[ $(status) == not-installed ]] || fail "status after purge: $(status)"
after=$(tables)
[[ $after == "${before/table inet kube-nftpol;/}" ]] || fail "purge: tables $before -> $after"
grep -q "deleted table inet kube-nftpol" "$work/out" || fail "postrm did not report the deletion"
for f in /usr/bin/kube-nftpol /lib/systemd/system/kube-nftpol.service /etc/default/kube-nftpol \
  /usr/share/doc/kube-nftpol; do
  [[ ! -e $f ]] || fail "purge left $f"
done
ok "purge deletes table inet kube-nftpol only (kept: ${after%;}), and every file"
echo "passed"
