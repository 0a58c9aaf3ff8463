#!/usr/bin/env bash
# The Debian package, end to end, as root on this machine (run by .ci/run): builds it with
# cargo-deb, runs lintian on it, installs it with dpkg -i and checks what it put where (the
# user, the state folder's owner and mode, the conffile, the man pages, the completions,
# `gitopsd --version`, that the service is not enabled), runs `systemd-analyze verify` and an
# offline `systemd-analyze security` (exposure 2.0 or less) on the installed unit, upgrades to
# a package of another version with the conffile edited in between (the edit is kept), then
# removes and purges it, checking what each leaves behind.
#
# It installs what it needs when missing: cargo-deb (from crates.io), and Debian's lintian,
# systemd (systemd-analyze, systemd-sysusers, systemd-tmpfiles), man-db and git. A gitopsd
# package already installed is purged first.
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" -eq 0 ] || { echo "tests/package.sh: run as root (it installs the package)" >&2; exit 2; }

need=()
command -v lintian >/dev/null || need+=(lintian)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v man >/dev/null || need+=(man-db)
command -v git >/dev/null || need+=(git)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
cargo deb --version >/dev/null 2>&1 || cargo install --locked --quiet cargo-deb

failures=0
check() { # check DESCRIPTION COMMAND...: runs the command, says ok or FAILED
  local what=$1
  shift
  if "$@"; then
    echo "ok: $what"
  else
    echo "FAILED: $what" >&2
    failures=$((failures + 1))
  fi
}
fail_now() { echo "FAILED: $*" >&2; exit 1; }

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

if dpkg-query -W -f='${Status}' gitopsd 2>/dev/null | grep -q 'installed\|config-files'; then
  echo "tests/package.sh: purging the gitopsd package already installed"
  dpkg --purge gitopsd >/dev/null
fi

echo "== build"
cargo deb --quiet --output "$out/gitopsd_1.deb"
deb=$out/gitopsd_1.deb
version=$(dpkg-deb -f "$deb" Version)
echo "built $(dpkg-deb -f "$deb" Package) $version"

echo "== lintian"
# Any tag of warning or error severity fails; overrides live in the package, each with a reason.
lintian --fail-on error,warning --display-level '>=warning' --tag-display-limit 0 "$deb" ||
  fail_now "lintian reports the tags above"
echo "ok: lintian"

echo "== maintainer scripts"
dpkg-deb -e "$deb" "$out/control"
# (cargo-deb's "don't enable" snippet only re-enables a unit that was enabled before an upgrade.)
check "postinst does not enable the service" \
  bash -c "grep -q 'deb-systemd-helper debian-installed gitopsd.service' '$out/control/postinst' && ! grep -q 'new installations run enable' '$out/control/postinst'"
check "postinst starts nothing on install, try-restarts on upgrade" \
  bash -c "grep -q 'deb-systemd-invoke try-restart gitopsd.service' '$out/control/postinst' && ! grep -q 'deb-systemd-invoke start' '$out/control/postinst'"
check "postinst makes the user (sysusers.d)" grep -q 'systemd-sysusers.*gitopsd.conf' "$out/control/postinst"
check "/etc/gitopsd/gitopsd.toml is a conffile" grep -qx '/etc/gitopsd/gitopsd.toml' "$out/control/conffiles"

echo "== install"
dpkg -i "$deb" >/dev/null
check "the package is installed" bash -c "dpkg-query -W -f='\${Status}' gitopsd | grep -q 'install ok installed'"
check "/usr/bin/gitopsd --version" bash -c "[ \"\$(/usr/bin/gitopsd --version)\" = 'gitopsd ${version%-*}' ]"
check "user gitopsd, home /var/lib/gitopsd, no login shell" \
  bash -c "getent passwd gitopsd | awk -F: '\$6 == \"/var/lib/gitopsd\" && \$7 ~ /nologin\$/ { found = 1 } END { exit !found }'"
check "/var/lib/gitopsd is gitopsd:gitopsd 0750" bash -c "[ \"\$(stat -c '%U:%G %a' /var/lib/gitopsd)\" = 'gitopsd:gitopsd 750' ]"
check "the conffile passes validate --config-only" /usr/bin/gitopsd --config /etc/gitopsd/gitopsd.toml validate --config-only
check "man -w gitopsd" bash -c "man -w gitopsd | grep -q '^/usr/share/man/man1/gitopsd.1.gz$'"
for page in $(/usr/bin/gitopsd --help | awk '/^Commands:/ { on = 1; next } /^$/ { on = 0 } on && $1 != "help" { print $1 }'); do
  check "man -w gitopsd-$page" bash -c "man -w gitopsd-$page >/dev/null"
done
check "bash completion" bash -c "source /usr/share/bash-completion/completions/gitopsd && complete -p gitopsd | grep -q gitopsd"
check "zsh completion" grep -q '^#compdef gitopsd' /usr/share/zsh/vendor-completions/_gitopsd
check "fish completion" grep -q 'complete -c gitopsd' /usr/share/fish/vendor_completions.d/gitopsd.fish
check "copyright names the licence" grep -q 'License: MIT' /usr/share/doc/gitopsd/copyright
unit=$(dpkg -L gitopsd | grep '/systemd/system/gitopsd.service$')
check "the unit runs /usr/bin/gitopsd" grep -q '^ExecStart=/usr/bin/gitopsd ' "$unit"
check "the service is not enabled" bash -c "[ ! -e /etc/systemd/system/multi-user.target.wants/gitopsd.service ]"

echo "== the installed unit"
check "systemd-analyze verify $unit" systemd-analyze verify "$unit"
report=$(systemd-analyze security --offline=yes "$unit" 2>&1 || true)
exposure=$(printf '%s\n' "$report" | sed -n 's/.*Overall exposure level for gitopsd.service: \([0-9.]*\).*/\1/p')
echo "systemd-analyze security: exposure ${exposure:-unknown}"
check "exposure 2.0 or less" awk -v e="$exposure" 'BEGIN { exit !(e != "" && e <= 2.0) }'

echo "== upgrade, the conffile edited"
echo '# edited by tests/package.sh' >>/etc/gitopsd/gitopsd.toml
echo 'state' >/var/lib/gitopsd/kept
cargo deb --quiet --no-build --deb-revision 2 --output "$out/gitopsd_2.deb"
next=$(dpkg-deb -f "$out/gitopsd_2.deb" Version)
[ "$next" != "$version" ] || fail_now "the rebuilt package has the same version $version"
dpkg -i "$out/gitopsd_2.deb" >/dev/null
check "upgraded from $version to $next" bash -c "[ \"\$(dpkg-query -W -f='\${Version}' gitopsd)\" = '$next' ]"
check "the edited conffile is kept" grep -qx '# edited by tests/package.sh' /etc/gitopsd/gitopsd.toml
check "the state is kept" test -f /var/lib/gitopsd/kept

echo "== remove"
dpkg --remove gitopsd >/dev/null
check "the binary is gone" test ! -e /usr/bin/gitopsd
check "the unit is gone" test ! -e "$unit"
check "the conffile stays until purge" test -f /etc/gitopsd/gitopsd.toml
check "the state stays until purge" test -f /var/lib/gitopsd/kept

echo "== purge"
dpkg --purge gitopsd >/dev/null
check "the package is gone" bash -c "! dpkg-query -W gitopsd >/dev/null 2>&1"
check "the conffile is gone" test ! -e /etc/gitopsd/gitopsd.toml
check "the state folder is gone" test ! -e /var/lib/gitopsd
check "the system user stays (Debian removes none)" bash -c "getent passwd gitopsd >/dev/null"

if [ "$failures" -ne 0 ]; then
  echo "tests/package.sh: $failures checks failed" >&2
  exit 1
fi
echo "tests/package.sh: the Debian package passed every check"
