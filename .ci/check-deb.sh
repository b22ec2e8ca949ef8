#!/usr/bin/env bash
# Builds the Debian package with cargo-deb (installing cargo-deb if needed)
# and checks what an appliance gets from `apt install ./cdrhook_*.deb`: the
# file list, the conffile, and the maintainer scripts that create the user
# and directories and start the unit.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo-deb >/dev/null 2>&1; then
  echo "check-deb: installing cargo-deb"
  cargo install --locked --quiet cargo-deb
fi
# dpkg-deb reads the package back. Install it when we can (package dpkg);
# without it the package is not checked, which is a failure, not a skip.
if ! command -v dpkg-deb >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "check-deb: installing dpkg-deb (package dpkg)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dpkg >/dev/null
  fi
fi
if ! command -v dpkg-deb >/dev/null 2>&1; then
  echo "check-deb: FAILED: dpkg-deb is not installed and could not be installed" >&2
  echo "check-deb: (install package dpkg: apt-get install dpkg)" >&2
  exit 1
fi

cargo deb --quiet 2>&1 | grep -v "No usable systemd units" || true
deb=$(ls -t target/debian/cdrhook_*.deb | head -n 1)
echo "check-deb: $deb"
list=$(dpkg-deb -c "$deb")
status=0
for f in ./usr/bin/cdrhook \
         ./usr/lib/systemd/system/cdrhook.service \
         ./usr/lib/sysusers.d/cdrhook.conf \
         ./usr/lib/tmpfiles.d/cdrhook.conf \
         ./etc/cdrhook/config.yaml \
         ./usr/share/doc/cdrhook/README.md; do
  if ! grep -q " $f\$" <<<"$list"; then
    echo "check-deb: FAILED: $f is not in the package"
    status=1
  fi
done
if ! dpkg-deb -I "$deb" conffiles | grep -qx /etc/cdrhook/config.yaml; then
  echo "check-deb: FAILED: /etc/cdrhook/config.yaml is not a conffile"
  status=1
fi
postinst=$(dpkg-deb -I "$deb" postinst)
for needle in systemd-sysusers systemd-tmpfiles "enable" "cdrhook.service"; do
  if ! grep -q -- "$needle" <<<"$postinst"; then
    echo "check-deb: FAILED: postinst does not mention $needle"
    status=1
  fi
done
# The shipped config must be one the daemon accepts.
if ! target/release/cdrhook check-config config.example.yaml >/dev/null; then
  echo "check-deb: FAILED: config.example.yaml does not pass check-config"
  status=1
fi
[ "$status" = 0 ] && echo "check-deb: OK"
exit "$status"
