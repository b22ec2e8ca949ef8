#!/usr/bin/env bash
# Proves the Debian package under a real systemd, the way an appliance builder
# installs it: builds the .deb, boots a Debian 12 (bookworm, systemd 252)
# container with systemd-nspawn, installs the package with
# `apt-get install ./cdrhook_*.deb`, and checks every claim of the README's
# "Installing on an appliance" section. Each check prints PASS or FAIL with
# what failed, and on failure `systemctl status` and `journalctl -u cdrhook`.
#
#   sudo .ci/systemd-test.sh            (run by .ci/run after the deb check)
#
# Needs root, systemd-nspawn and debootstrap (installed with apt-get when
# missing) and Debian's package registry (only while the root file system
# is built). The root file system is cached outside the clone, in
# $CDRHOOK_CI_CACHE (default /var/cache/cdrhook-ci/rootfs-bookworm), and
# rebuilt when missing or incomplete; every run boots a throw-away overlay
# of it, so the cache is never changed by a test.
#
# A machine that cannot boot a container makes this script FAIL, loudly.
# To skip it on purpose (a CI runner without privileges), set
# CDRHOOK_SKIP_SYSTEMD_TEST=1: it then says SKIPPED and exits 0.
#
# Timings on the project's 2-core VM (release build already done): about
# 2.5 min with no cache (one minute of it debootstrap), 1.5 min with it;
# README, "How the package is tested", has the measured figures.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
export CARGO_TERM_COLOR=never

say() { echo "systemd-test: $*"; }
banner() {
    echo "systemd-test: ######################################################" >&2
    for line in "$@"; do echo "systemd-test: # $line" >&2; done
    echo "systemd-test: ######################################################" >&2
}

if [ "${CDRHOOK_SKIP_SYSTEMD_TEST:-}" = 1 ]; then
    banner "SKIPPED because CDRHOOK_SKIP_SYSTEMD_TEST=1:" \
        "the package has NOT been tested under systemd on this run."
    exit 0
fi

# The machine cannot run the test: say so loudly and fail, never pass.
cannot() {
    banner "CANNOT RUN the systemd test: $*" \
        "The package has NOT been tested under systemd." \
        "Fix the machine (root, systemd-nspawn, namespaces), or set" \
        "CDRHOOK_SKIP_SYSTEMD_TEST=1 to skip this test on purpose."
    exit 1
}

[ "$(id -u)" = 0 ] || cannot "it needs root (to boot a container with systemd-nspawn)"

# ---------------------------------------------------------------- tools
need_pkgs=()
command -v systemd-nspawn >/dev/null 2>&1 || need_pkgs+=(systemd-container)
command -v debootstrap >/dev/null 2>&1 || need_pkgs+=(debootstrap)
command -v python3 >/dev/null 2>&1 || need_pkgs+=(python3)
command -v nsenter >/dev/null 2>&1 || need_pkgs+=(util-linux)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || cannot "missing ${need_pkgs[*]} and no apt-get to install them"
    say "installing ${need_pkgs[*]}"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null; } ||
        cannot "apt-get could not install ${need_pkgs[*]}"
fi
for tool in systemd-nspawn debootstrap python3 nsenter; do
    command -v "$tool" >/dev/null 2>&1 || cannot "$tool is not installed"
done
if ! command -v cargo-deb >/dev/null 2>&1; then
    say "installing cargo-deb"
    cargo install --locked --quiet cargo-deb
fi
PYTHON=$(command -v python3)

# ---------------------------------------------------------------- timing
T_START=$SECONDS
phase_start=$SECONDS
phase() {
    say "($1 took $((SECONDS - phase_start)) s)"
    phase_start=$SECONDS
}

# ---------------------------------------------------------------- the packages
# The package as CI builds it (release build), and the same build under a
# higher version, for the upgrade check.
WORK=$(mktemp -d /var/tmp/cdrhook-systemd-test.XXXXXX)
chmod 755 "$WORK"
mkdir -p "$WORK/debs" "$WORK/recv"
say "building the package (cargo deb: release build)"
cargo deb --quiet -o "$WORK/debs/" 2>&1 | grep -v "No usable systemd units" || true
DEB1=$(ls "$WORK"/debs/cdrhook_*.deb 2>/dev/null | head -n 1)
[ -n "$DEB1" ] || { say "FAIL: cargo deb built no package"; exit 1; }
V1=$(dpkg-deb -f "$DEB1" Version)
UPSTREAM=${V1%-*}
V2="$UPSTREAM+systemdtest-1"
mkdir -p "$WORK/debs/new"
cargo deb --quiet --no-build --deb-version "$V2" -o "$WORK/debs/new/" 2>&1 |
    grep -v "No usable systemd units" || true
DEB2=$(ls "$WORK"/debs/new/cdrhook_*.deb 2>/dev/null | head -n 1)
[ -n "$DEB2" ] || { say "FAIL: cargo deb --deb-version $V2 built no package"; exit 1; }
dpkg --compare-versions "$V2" gt "$V1" || { say "FAIL: $V2 is not higher than $V1"; exit 1; }
chmod -R a+rX "$WORK/debs"
say "packages: $(basename "$DEB1"), and $(basename "$DEB2") for the upgrade"
phase "building the packages"

# ---------------------------------------------------------------- root fs
CACHE=${CDRHOOK_CI_CACHE:-/var/cache/cdrhook-ci}
ROOTFS=$CACHE/rootfs-bookworm
MIRROR=${CDRHOOK_CI_MIRROR:-http://deb.debian.org/debian}
# What the cached root file system is: change it and every cache is rebuilt.
# minbase has no procps (/bin/kill), which is exactly what an appliance may
# lack; acl is only there for getfacl in failure messages.
INCLUDE=systemd,systemd-sysv,dbus,acl
ROOTFS_KEY="bookworm minbase $INCLUDE v1"
MARKER=.cdrhook-ci-rootfs
# Removes a directory tree that an interrupted debootstrap may have left
# with file systems (proc, sys) mounted inside: unmount those first, and
# never cross into a mount.
remove_tree() {
    awk -v p="$1/" 'index($2, p) == 1 { print $2 }' /proc/mounts | sort -r |
        while read -r m; do umount -l "$m" || true; done
    rm -rf --one-file-system "$1"
}
mkdir -p "$CACHE"
# One run at a time checks or builds the cache.
exec 9>"$CACHE/.lock"
flock 9
if [ -f "$ROOTFS/$MARKER" ] && [ "$(cat "$ROOTFS/$MARKER")" = "$ROOTFS_KEY" ]; then
    say "reusing the root file system $ROOTFS"
else
    # Built beside the cache under a temporary name and renamed into place
    # only when complete (the marker is written last), so an interrupted run
    # never leaves a cache that looks usable.
    say "creating the Debian 12 root file system $ROOTFS (debootstrap, a minute or two)"
    for leftover in "$CACHE"/.rootfs-bookworm.*; do # of interrupted runs
        [ -e "$leftover" ] && remove_tree "$leftover"
    done
    tmp=$(mktemp -d "$CACHE/.rootfs-bookworm.XXXXXX")
    if ! debootstrap --variant=minbase --include="$INCLUDE" bookworm "$tmp" "$MIRROR" \
        >"$WORK/debootstrap.log" 2>&1; then
        tail -n 30 "$WORK/debootstrap.log"
        remove_tree "$tmp"
        say "FAIL: debootstrap could not build the root file system (log above)"
        exit 1
    fi
    # mktemp made it 0700: a root directory must be traversable by everyone.
    chmod 755 "$tmp"
    # debootstrap leaves bookworm's package lists inside, so apt-get there
    # can resolve a dependency the package adds later; only the downloaded
    # .debs go.
    chroot "$tmp" apt-get clean
    echo "$ROOTFS_KEY" >"$tmp/$MARKER"
    [ -e "$ROOTFS" ] && remove_tree "$ROOTFS"
    mv "$tmp" "$ROOTFS"
fi
flock -u 9
phase "the root file system"

# ---------------------------------------------------------------- container
# A fresh overlay of the cached root file system (a copy when overlayfs is
# not available), booted with systemd-nspawn on the host's network, so that
# 127.0.0.1 in the container is the host's, where the receiver listens.
ROOT=$WORK/root
mkdir -p "$ROOT" "$WORK/upper" "$WORK/ovl"
OVERLAY=0
if mount -t overlay overlay -o "lowerdir=$ROOTFS,upperdir=$WORK/upper,workdir=$WORK/ovl" "$ROOT" 2>/dev/null; then
    OVERLAY=1
else
    say "(overlayfs not available: copying the root file system)"
    cp -a "$ROOTFS/." "$ROOT/"
fi

NSPAWN_PID=
LEADER=
RECV_PID=
cleanup() {
    set +e
    if [ -n "$NSPAWN_PID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
        [ -n "$LEADER" ] && nsenter -t "$LEADER" -a -- /usr/bin/env -i PATH=/usr/bin:/bin \
            systemctl poweroff >/dev/null 2>&1
        for _ in $(seq 100); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$NSPAWN_PID" 2>/dev/null
        wait "$NSPAWN_PID" 2>/dev/null
    fi
    [ -n "$RECV_PID" ] && kill "$RECV_PID" 2>/dev/null && wait "$RECV_PID" 2>/dev/null
    [ "$OVERLAY" = 1 ] && umount "$ROOT" 2>/dev/null
    if [ -z "${CDRHOOK_SYSTEMD_TEST_KEEP:-}" ]; then
        rm -rf "$WORK"
    else
        say "kept $WORK (CDRHOOK_SYSTEMD_TEST_KEEP is set)"
    fi
}
trap cleanup EXIT

# Runs a command inside the container, as root, with a clean environment.
cx() {
    nsenter -t "$LEADER" -a -- /usr/bin/env -i \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive SYSTEMD_COLORS=0 "$@"
}
# Runs a command inside the container as USER (its own groups, no PAM).
as_user() {
    local user=$1
    shift
    cx setpriv --reuid="$user" --regid="$user" --init-groups --reset-env "$@"
}

boot() {
    systemd-nspawn -D "$ROOT" --boot --register=no --keep-unit --link-journal=no \
        --console=read-only --quiet --bind-ro="$WORK/debs:/debs" \
        >>"$WORK/console.log" 2>&1 &
    NSPAWN_PID=$!
    LEADER=
    local deadline=$((SECONDS + 60))
    while [ $SECONDS -lt $deadline ]; do
        if ! kill -0 "$NSPAWN_PID" 2>/dev/null; then
            tail -n 20 "$WORK/console.log"
            cannot "systemd-nspawn exited at once (its output is above)"
        fi
        for pid in $(pgrep -P "$NSPAWN_PID"); do
            if grep -qE '^NSpid:.*[[:space:]]1$' "/proc/$pid/status" 2>/dev/null &&
                [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = systemd ]; then
                LEADER=$pid
            fi
        done
        if [ -n "$LEADER" ]; then
            state=$(timeout 10 nsenter -t "$LEADER" -a -- /usr/bin/env -i PATH=/usr/bin:/bin \
                systemctl is-system-running --wait 2>/dev/null || true)
            case "$state" in
            running) return 0 ;;
            degraded)
                say "(the container booted degraded:)"
                cx systemctl --failed --no-pager || true
                return 0
                ;;
            esac
        fi
        sleep 0.2
    done
    tail -n 20 "$WORK/console.log"
    cannot "the container did not finish booting within 60 s (console above)"
}

# Reboots the container: systemd-nspawn exits when its container reboots, so
# it is started again on the same (overlay) root.
reboot_container() {
    cx systemctl reboot || true
    local deadline=$((SECONDS + 60))
    while kill -0 "$NSPAWN_PID" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    if kill -0 "$NSPAWN_PID" 2>/dev/null; then
        say "FAIL: the container did not shut down for its reboot within 60 s"
        exit 1
    fi
    wait "$NSPAWN_PID" || true
    boot
}

say "booting the container"
boot
say "container up: $(cx systemctl --version | head -n 1)"
phase "booting the container"

# ---------------------------------------------------------------- checks
FAILURES=()
pass() { say "PASS: $*"; }
diagnose() {
    {
        echo "---- systemctl status cdrhook"
        cx systemctl status cdrhook --no-pager -l -n 0 2>&1 || true
        echo "---- journalctl -u cdrhook (last 40 lines)"
        cx journalctl -u cdrhook --no-pager -n 40 -o short-monotonic 2>&1 || true
        echo "----"
    } | sed 's/^/systemd-test:     | /'
}
fail() {
    say "FAIL: $*"
    FAILURES+=("$*")
    diagnose
}
# A failure after which the remaining checks make no sense.
fatal() {
    fail "$@"
    say "stopping here: the checks after this one depend on it"
    exit 1
}
# check DESCRIPTION COMMAND...: PASS when the command succeeds.
check() {
    local what=$1
    shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}
# wait_until SECONDS COMMAND...: polls every 0.2 s until COMMAND succeeds.
wait_until() {
    local deadline=$((SECONDS + $1))
    shift
    while ! "$@"; do
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.2
    done
}
prop() { cx systemctl show cdrhook -P "$1" 2>/dev/null; }
usec_of() { cx systemd-analyze timespan "$1" | awk '/μs:/ {print $2}'; }
running() { [ "$(prop ActiveState)/$(prop SubState)" = active/running ]; }
state() { echo "$(prop ActiveState) ($(prop SubState)), result $(prop Result)"; }

# The webhook receiver, on the host's 127.0.0.1 (shared with the container).
RECV=$WORK/recv
"$PYTHON" .ci/systemd-test-receiver.py "$RECV" &
RECV_PID=$!
wait_until 10 test -s "$RECV/port" || { say "FAIL: the receiver did not start"; exit 1; }
PORT=$(cat "$RECV/port")
touch "$RECV/got.log" "$RECV/hung.log"
receiver_mode() { echo "$1" >"$RECV/mode"; }
# got PATH CALLID: the receiver answered a POST of that CDR on that path.
got() { grep -q "^$1 $2 " "$RECV/got.log"; }
hung() { grep -q " $1 " "$RECV/hung.log"; }

# A queue CDR with the given CallId (its content, and so its id, is unique).
cdr() {
    cat <<EOF
{"EventType": "App.QueueWebhook", "CallId": "$1", "CallDirection": "Inbound",
 "CallerNumber": "+13125550187", "StartDateTime": "2026-11-20T14:03:11.482Z",
 "EndDateTime": "2026-11-20T14:09:47.015Z", "QueueId": "0c9d7e51-8a3f-4f0b-b6f2-71e4d2a9c803",
 "QueueName": "Billing Support", "WaitTime": "00:01:12", "MetServiceLevel": true}
EOF
}
SPOOL=/var/spool/cdrhook
# drop NAME CALLID [UMASK]: the phone system's user writes NAME.json the way
# the spool protocol says: a temporary name in the spool, then a rename.
drop() {
    cdr "$2" | as_user phone sh -c "umask ${3:-022} && cat >$SPOOL/.$1.tmp && mv $SPOOL/.$1.tmp $SPOOL/$1.json"
}
# wait_got PATH SECONDS CALLID...: every CDR reaches the receiver on PATH.
wait_got() {
    local path=$1 secs=$2 missing=()
    shift 2
    local deadline=$((SECONDS + secs))
    for call in "$@"; do
        while ! got "$path" "$call" && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
        got "$path" "$call" || missing+=("$call")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        say "not received on $path within ${secs}s: ${missing[*]}"
        return 1
    fi
}

# ================================================================ install
say "== install: apt-get install ./$(basename "$DEB1")"
if ! cx apt-get install -y "/debs/$(basename "$DEB1")" >"$WORK/apt-install.log" 2>&1; then
    sed 's/^/systemd-test:     | /' "$WORK/apt-install.log"
    fatal "apt-get install ./$(basename "$DEB1") failed (output above)"
fi
pass "apt-get install ./$(basename "$DEB1") (declared dependencies resolved by apt)"

# A Type=notify unit only becomes active (running) once the daemon has sent
# READY=1; without it, it would stay "activating" until TimeoutStartSec.
wait_until 30 running || true
if running && [ "$(prop Type)" = notify ] &&
    cx journalctl -u cdrhook -o cat --no-pager | grep -q '^Started cdrhook.service'; then
    pass "after install: active (running), Type=notify, READY=1 arrived (systemd logged 'Started')"
else
    fatal "after install: expected active (running) with READY=1; it is $(state), Type=$(prop Type)"
fi
check "after install: enabled" [ "$(cx systemctl is-enabled cdrhook)" = enabled ]

mode_of() { cx stat -c '%U:%G %a' "$1"; }
check "/etc/cdrhook/config.yaml is root:cdrhook 640 (it holds secrets)" \
    [ "$(mode_of /etc/cdrhook/config.yaml)" = "root:cdrhook 640" ]
check "the spool is cdrhook:cdrhook 2770" [ "$(mode_of $SPOOL)" = "cdrhook:cdrhook 2770" ]
acl_ok() {
    cx getfacl -p "$SPOOL" 2>/dev/null | grep -qx 'default:group:cdrhook:rwx'
}
if acl_ok; then
    pass "the spool has the default ACL default:group:cdrhook:rwx"
else
    fail "the spool has no default ACL for group cdrhook: $(cx getfacl -p $SPOOL 2>&1 | tr '\n' ' ')"
fi

# The users of the README: the phone system's (in group cdrhook), an
# operator (in group cdrhook) and someone else.
cx useradd --system --no-create-home --shell /usr/sbin/nologin --groups cdrhook phone
cx useradd --no-create-home --shell /bin/sh --groups cdrhook alice
cx useradd --no-create-home --shell /bin/sh mallory
phase "install"

# ================================================================ configure
# An operator's edit of the shipped config: the example subscription, pointed
# at the receiver and made active. This also makes the conffile "locally
# modified" for the upgrade check.
say "== configure the subscription and reload"
cx sed -i -e "s|endpoint: https://crm.example.com/hooks/cdr|endpoint: http://127.0.0.1:$PORT/a|" \
    -e 's|^    active: false$|    active: true|' /etc/cdrhook/config.yaml
cx grep -q "endpoint: http://127.0.0.1:$PORT/a" /etc/cdrhook/config.yaml &&
    cx grep -q '^    active: true$' /etc/cdrhook/config.yaml ||
    fatal "could not edit the shipped config.yaml (did its example subscription change?)"
if out=$(cx systemctl reload cdrhook 2>&1); then
    pass "systemctl reload cdrhook (ExecReload works on minbase, without procps)"
else
    fatal "systemctl reload cdrhook failed: $out"
fi
check "after reload: back to active (running), not stuck in reloading" wait_until 10 running

# ================================================================ phone system
say "== the phone system's user drops CDRs"
drop c1 ci-c1 022
drop c2 ci-c2 077
if wait_got /a 20 ci-c1; then
    pass "a CDR renamed into the spool by user phone (group cdrhook, umask 022) is delivered"
else
    fail "a CDR renamed into the spool by user phone (umask 022) did not reach the receiver"
fi
if wait_got /a 20 ci-c2; then
    pass "a CDR written with umask 077 by user phone is delivered (the spool's default ACL)"
else
    fail "a CDR written with umask 077 was not delivered; spool: $(cx ls -la $SPOOL | tr '\n' ' ')"
fi
phase "delivery"

# ================================================================ operators
say "== cdrhook status: group cdrhook only"
if out=$(as_user alice cdrhook status 2>&1) && grep -q crm <<<"$out"; then
    pass "cdrhook status works for alice (group cdrhook)"
else
    fail "cdrhook status as alice (group cdrhook) failed: $out"
fi
rc=0
out=$(as_user mallory cdrhook status 2>&1) || rc=$?
if [ "$rc" != 0 ] && grep -qi 'permission denied' <<<"$out" && grep -q 'group cdrhook' <<<"$out"; then
    pass "cdrhook status is refused for mallory (not in group cdrhook): exit $rc, '$(tr '\n' ' ' <<<"$out")'"
else
    fail "cdrhook status as mallory (not in group cdrhook) should be refused with 'permission denied' and a hint naming group cdrhook; exit $rc: $out"
fi

# ================================================================ reload
say "== reload: a good edit, then a bad one"
cx sed -i "s|http://127.0.0.1:$PORT/a|http://127.0.0.1:$PORT/b|" /etc/cdrhook/config.yaml
if out=$(cx systemctl reload cdrhook 2>&1); then
    pass "systemctl reload with a good edit succeeds"
else
    fail "systemctl reload with a good edit failed: $out"
fi
drop r1 ci-r1
check "the good edit takes effect (a new CDR goes to the new endpoint /b)" wait_got /b 20 ci-r1

cp_conf() { cx cp -p /etc/cdrhook/config.yaml "$1"; }
cp_conf /root/config.good
cx sh -c 'echo "bogus_key_for_ci: 1" >> /etc/cdrhook/config.yaml'
rc=0
out=$(cx systemctl reload cdrhook 2>&1) || rc=$?
if [ "$rc" != 0 ]; then
    pass "systemctl reload with a bad edit fails (exit $rc)"
else
    fail "systemctl reload with a bad edit (an unknown key) succeeded: $out"
fi
if cx journalctl -u cdrhook -o cat --no-pager | grep -i refused | grep -q bogus_key_for_ci; then
    pass "the reason is in journalctl -u cdrhook: $(cx journalctl -u cdrhook -o cat --no-pager | grep -i refused | grep bogus_key_for_ci | tail -n 1)"
else
    fail "journalctl -u cdrhook does not say why the reload was refused (bogus_key_for_ci)"
fi
# The file watcher sees the edit too, so the lines above could come from it
# alone: the reload command's own error line (ExecReload's stderr, "cdrhook:
# ..." at err) shows that systemctl reload itself asked and was told why.
if cx journalctl -u cdrhook -o cat --no-pager -p 0..3 | grep '^cdrhook: ' | grep -q bogus_key_for_ci; then
    pass "ExecReload's cdrhook reload printed the refusal at err: $(cx journalctl -u cdrhook -o cat --no-pager -p 0..3 | grep '^cdrhook: ' | grep bogus_key_for_ci | tail -n 1)"
else
    fail "no 'cdrhook: ...bogus_key_for_ci' line at err from ExecReload's cdrhook reload: systemctl reload may not have asked the daemon"
fi
check "after the refused reload: still active (running)" wait_until 10 running
drop r2 ci-r2
check "after the refused reload, the old config keeps delivering (to /b)" wait_got /b 20 ci-r2
phase "reload"

# ================================================================ log priorities
say "== log priorities in the journal"
# journalctl -p FROM..TO selects by priority: 3 err, 4 warning, 6 info.
at() { cx journalctl -u cdrhook -o cat --no-pager -p "$1"; }
if at 0..4 | grep -i refused | grep -q bogus_key_for_ci; then
    pass "a refused config is logged at warning or worse"
else
    fail "the refused config is not at warning or worse"
fi
if lines=$(at 5..7 | grep bogus_key_for_ci); then
    fail "the refusal is also logged at a lower priority (notice/info/debug): $lines"
else
    pass "no line about the refusal at a lower priority than warning"
fi
if at 6..6 | grep -q '^config reloaded from'; then
    pass "an info line ('config reloaded from ...') is at info"
else
    fail "'config reloaded from' is not at priority info"
fi
if lines=$(cx journalctl -u cdrhook -o cat --no-pager | grep -E '^<[0-7]>'); then
    fail "lines with an unparsed <N> priority prefix in the journal: $lines"
else
    pass "no raw <N> prefixes in the journal"
fi

# A config the daemon cannot start with: the start fails, the reason is at
# err, and the README's troubleshooting step (journalctl -u cdrhook) shows it.
say "== start with a broken config"
cx systemctl stop cdrhook
rc=0
out=$(cx systemctl start cdrhook 2>&1) || rc=$?
if [ "$rc" != 0 ]; then
    pass "systemctl start with a broken config fails (exit $rc)"
else
    fail "systemctl start with a broken config succeeded"
fi
if at 0..3 | grep -v refused | grep -q bogus_key_for_ci; then
    pass "the start failure's reason is at err: $(at 0..3 | grep -v refused | grep bogus_key_for_ci | tail -n 1)"
else
    fail "the start failure's reason (bogus_key_for_ci) is not at priority err"
fi
if lines=$(at 5..7 | grep bogus_key_for_ci); then
    fail "the start failure's reason is also logged at a lower priority than warning: $lines"
else
    pass "no line about the start failure at a lower priority than warning"
fi
cx cp -p /root/config.good /etc/cdrhook/config.yaml
cx systemctl reset-failed cdrhook 2>/dev/null || true
cx systemctl restart cdrhook
check "with the config fixed, systemctl restart brings it back: active (running)" wait_until 30 running
phase "log priorities"

# ================================================================ reboot
say "== reboot the container"
OLD_INVOCATION=$(prop InvocationID)
OLD_LEADER=$LEADER
reboot_container
wait_until 30 running || true
if running && [ "$LEADER" != "$OLD_LEADER" ] && [ "$(prop InvocationID)" != "$OLD_INVOCATION" ]; then
    pass "after a reboot: active (running), started afresh by the new boot"
else
    fail "after a reboot: expected active (running), it is $(state)"
fi
check "after a reboot: the spool still has its default ACL (tmpfiles at boot)" acl_ok
drop b1 ci-b1 077
check "after a reboot: a CDR written with umask 077 is delivered" wait_got /b 20 ci-b1
phase "reboot"

# ================================================================ security
say "== systemd-analyze security on the live unit"
out=$(cx systemd-analyze security cdrhook.service --no-pager 2>&1 || true)
score=$(grep -o 'Overall exposure level for cdrhook.service: [0-9.]*' <<<"$out" | awk '{print $NF}')
if [ -n "$score" ] && awk -v s="$score" 'BEGIN { exit !(s <= 1.5) }'; then
    pass "systemd-analyze security cdrhook: $score (at most 1.5)"
else
    fail "systemd-analyze security cdrhook: '${score:-no score}' (must be at most 1.5): $(tail -n 5 <<<"$out")"
fi

# ================================================================ watchdog
say "== watchdog: SIGSTOP the daemon with deliveries in flight and queued"
WD_USEC=$(usec_of "$(prop WatchdogUSec)")
WD_SECS=$((WD_USEC / 1000000))
if [ "$WD_SECS" -le 0 ]; then
    fail "the live unit has no watchdog (WatchdogUSec=$(prop WatchdogUSec))"
else
    receiver_mode hang
    for i in 1 2 3 4 5; do drop "w$i" "ci-w$i"; done
    if ! wait_until 20 test -s "$RECV/hung.log"; then
        fail "watchdog: no request reached the receiver before the SIGSTOP"
    fi
    OLD_PID=$(prop MainPID)
    OLD_RESTARTS=$(prop NRestarts)
    t0=$SECONDS
    cx sh -c "kill -STOP $OLD_PID"
    # Queued while the daemon is frozen: taken in after the restart.
    for i in 6 7 8; do drop "w$i" "ci-w$i"; done
    restarted() { [ "$(prop MainPID)" != "$OLD_PID" ] && [ "$(prop MainPID)" != 0 ] && running; }
    margin=20
    if wait_until $((WD_SECS + margin)) restarted; then
        elapsed=$((SECONDS - t0))
        if cx journalctl -u cdrhook -o cat --no-pager | grep -q 'Watchdog timeout'; then
            pass "watchdog: the stopped daemon was killed and restarted after ${elapsed}s (WatchdogSec ${WD_SECS}s + ${margin}s margin; NRestarts $OLD_RESTARTS -> $(prop NRestarts))"
        else
            fail "watchdog: the daemon was restarted, but systemd logged no 'Watchdog timeout'"
        fi
    else
        fail "watchdog: no restart within ${WD_SECS}s + ${margin}s after SIGSTOP; it is $(state), MainPID $(prop MainPID) (was $OLD_PID)"
        cx sh -c "kill -CONT $OLD_PID" 2>/dev/null || true
    fi
    receiver_mode ok
    if wait_got /b 60 ci-w1 ci-w2 ci-w3 ci-w4 ci-w5 ci-w6 ci-w7 ci-w8; then
        pass "watchdog: nothing lost: all 8 CDRs (in flight, queued, and dropped while frozen) delivered after the restart"
    else
        fail "watchdog: CDRs lost across the watchdog restart"
    fi
fi
phase "watchdog"

# ================================================================ stop
say "== systemctl stop with deliveries in flight"
STOP_USEC=$(usec_of "$(prop TimeoutStopUSec)")
STOP_SECS=$((STOP_USEC / 1000000))
receiver_mode hang
drop s1 ci-s1
drop s2 ci-s2
wait_until 20 hung ci-s1 || fail "stop: no request in flight before the stop"
t0=$SECONDS
cx systemctl stop cdrhook || true
elapsed=$((SECONDS - t0))
result=$(prop Result)
code=$(prop ExecMainStatus)
if [ "$result" = success ] && [ "$code" = 0 ] && [ "$elapsed" -lt "$STOP_SECS" ]; then
    pass "systemctl stop with a request in flight: Result=success, exit 0, in ${elapsed}s (TimeoutStopSec ${STOP_SECS}s)"
else
    fail "systemctl stop with a request in flight: Result=$result, exit status $code, took ${elapsed}s (TimeoutStopSec ${STOP_SECS}s)"
fi
receiver_mode ok
cx systemctl start cdrhook || true
check "stop: the CDRs in flight at the stop are delivered after the start" wait_got /b 30 ci-s1 ci-s2
phase "stop"

# ================================================================ upgrade
say "== upgrade to $V2"
OLD_PID=$(prop MainPID)
if ! cx apt-get install -y "/debs/new/$(basename "$DEB2")" >"$WORK/apt-upgrade.log" 2>&1; then
    sed 's/^/systemd-test:     | /' "$WORK/apt-upgrade.log"
    fatal "apt-get install ./$(basename "$DEB2") (the upgrade) failed (output above)"
fi
check "upgrade: dpkg has version $V2" [ "$(cx dpkg-query -W -f '${Version}' cdrhook)" = "$V2" ]
wait_until 30 running || true
if running && [ "$(prop MainPID)" != "$OLD_PID" ]; then
    pass "upgrade: the service was restarted (MainPID $OLD_PID -> $(prop MainPID)) and is active (running)"
else
    fail "upgrade: expected a restarted, running service; it is $(state), MainPID $(prop MainPID) (was $OLD_PID)"
fi
if cx grep -q "endpoint: http://127.0.0.1:$PORT/b" /etc/cdrhook/config.yaml &&
    ! cx test -e /etc/cdrhook/config.yaml.dpkg-dist; then
    pass "upgrade: the locally edited /etc/cdrhook/config.yaml is kept (conffile)"
else
    fail "upgrade: the local edit of /etc/cdrhook/config.yaml was not kept"
fi
check "upgrade: config.yaml is still root:cdrhook 640" \
    [ "$(mode_of /etc/cdrhook/config.yaml)" = "root:cdrhook 640" ]
if out=$(as_user alice cdrhook attempts --call-id ci-c1 --json 2>&1) && grep -q ci-c1 <<<"$out"; then
    pass "upgrade: the journal is kept (cdrhook attempts still shows a CDR delivered before it)"
else
    fail "upgrade: the journal lost the attempts made before the upgrade: $out"
fi
drop u1 ci-u1 077
check "upgrade: CDRs are delivered after it" wait_got /b 20 ci-u1
phase "upgrade"

# ================================================================ remove
say "== apt-get remove"
if ! cx apt-get remove -y cdrhook >"$WORK/apt-remove.log" 2>&1; then
    sed 's/^/systemd-test:     | /' "$WORK/apt-remove.log"
    fatal "apt-get remove cdrhook failed (output above)"
fi
daemon_procs() {
    cx sh -c 'for p in /proc/[0-9]*; do [ "$(cat $p/comm 2>/dev/null)" = cdrhook ] && echo ${p#/proc/}; done; true'
}
active=$(cx systemctl is-active cdrhook 2>/dev/null || true)
if [ "$active" != active ] && [ -z "$(daemon_procs)" ]; then
    pass "remove: the service is stopped ($active) and no cdrhook process is left"
else
    fail "remove: the service still runs: $active, pids $(daemon_procs)"
fi
check "remove: /usr/bin/cdrhook is gone" cx test ! -e /usr/bin/cdrhook
check "remove: the edited config is kept" cx grep -q "127.0.0.1:$PORT/b" /etc/cdrhook/config.yaml
check "remove: the journal is kept (/var/lib/cdrhook/journal)" cx test -d /var/lib/cdrhook/journal
check "remove: dpkg shows 'deinstall ok config-files'" \
    [ "$(cx dpkg-query -W -f '${Status}' cdrhook)" = "deinstall ok config-files" ]

# ================================================================ purge
say "== apt-get purge (a CDR left in the spool)"
drop left ci-left
if ! cx apt-get purge -y cdrhook >"$WORK/apt-purge.log" 2>&1; then
    sed 's/^/systemd-test:     | /' "$WORK/apt-purge.log"
    fatal "apt-get purge cdrhook failed (output above)"
fi
check "purge: /etc/cdrhook (config.yaml, a conffile) is removed" cx test ! -e /etc/cdrhook
check "purge: /var/lib/cdrhook (the journal) is removed" cx test ! -e /var/lib/cdrhook
check "purge: the unit's enablement is removed" \
    cx test ! -e /etc/systemd/system/multi-user.target.wants/cdrhook.service
unknown_to_dpkg() { ! cx dpkg-query -W -f '${Status}' cdrhook 2>/dev/null | grep -q ok; }
check "purge: dpkg no longer knows the package" unknown_to_dpkg
check "purge: a spool that still holds a CDR is kept, with the CDR" cx test -f "$SPOOL/left.json"
check "purge: the system user cdrhook is kept (Debian never removes system users)" \
    cx getent passwd cdrhook

say "== install again, then purge with an empty spool and an environment file"
cx rm -f "$SPOOL/left.json"
if cx apt-get install -y "/debs/new/$(basename "$DEB2")" >"$WORK/apt-reinstall.log" 2>&1 &&
    cx sh -c 'echo CRM_TOKEN=x >/etc/cdrhook/environment' &&
    cx apt-get purge -y cdrhook >>"$WORK/apt-reinstall.log" 2>&1; then
    check "purge: an empty spool is removed" cx test ! -e "$SPOOL"
    check "purge: a file the administrator added (/etc/cdrhook/environment) is kept" \
        cx test -f /etc/cdrhook/environment
    check "purge: config.yaml is removed even so" cx test ! -e /etc/cdrhook/config.yaml
else
    sed 's/^/systemd-test:     | /' "$WORK/apt-reinstall.log"
    fail "install again and purge failed (output above)"
fi
phase "remove and purge"

# ================================================================ summary
say "took $((SECONDS - T_START)) s"
if [ "${#FAILURES[@]}" -gt 0 ]; then
    say "FAILED: ${#FAILURES[@]} check(s):"
    for f in "${FAILURES[@]}"; do say "  - $f"; done
    exit 1
fi
say "OK: every check passed"
