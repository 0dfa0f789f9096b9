#!/usr/bin/env bash
# Install lockerd on a Raspberry Pi (Raspberry Pi OS / Debian) as a hardened systemd service.
#
#   sudo systemd/install.sh [--dry-run] [--no-lgpio] [SOURCE_DIR]
#
# SOURCE_DIR is the project checkout to install (default: the checkout this script lives in).
# Idempotent: running it again upgrades the package and the unit, and leaves an existing
# configuration, user and groups alone. --dry-run prints every change instead of making it.
#
# Overridable for image builds and tests (defaults in brackets):
#   LOCKERD_PREFIX [/opt/lockerd]   LOCKER_ETC_DIR [/etc/locker]
#   SYSTEMD_UNIT_DIR [/etc/systemd/system]   UDEV_RULES_DIR [/etc/udev/rules.d]
#   PYTHON [python3]   LOCKER_EXAMPLE_CONFIG [SOURCE_DIR/config/locker.example.toml]
#   LOCKER_BIN_DIR [/usr/local/bin]: where the lockerd command is linked, for every user
set -euo pipefail

DRY_RUN=0
WITH_LGPIO=1
SOURCE_DIR=""
SERVICE_USER=locker
UNIT_NAME=lockerd.service

usage() {
    sed -n '2,13s/^# \{0,1\}//p' "$0"
}

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --no-lgpio) WITH_LGPIO=0 ;;
        -h | --help) usage; exit 0 ;;
        -*) echo "install.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
        *)
            if [ -n "$SOURCE_DIR" ]; then
                echo "install.sh: only one SOURCE_DIR may be given" >&2
                exit 2
            fi
            SOURCE_DIR="$1"
            ;;
    esac
    shift
done

SCRIPT_DIR="$(cd "$(dirname "$0")" && pwd)"
SOURCE_DIR="$(cd "${SOURCE_DIR:-$SCRIPT_DIR/..}" && pwd)"
PREFIX="${LOCKERD_PREFIX:-/opt/lockerd}"
ETC_DIR="${LOCKER_ETC_DIR:-/etc/locker}"
UNIT_DIR="${SYSTEMD_UNIT_DIR:-/etc/systemd/system}"
UDEV_DIR="${UDEV_RULES_DIR:-/etc/udev/rules.d}"
PYTHON="${PYTHON:-python3}"
EXAMPLE_CONFIG="${LOCKER_EXAMPLE_CONFIG:-$SOURCE_DIR/config/locker.example.toml}"
BIN_DIR="${LOCKER_BIN_DIR:-/usr/local/bin}"
VENV="$PREFIX/venv"

say() { printf '==> %s\n' "$*"; }

# Every change goes through run: the dry run prints it, a real run does it.
run() {
    if [ "$DRY_RUN" = 1 ]; then
        printf 'would run:'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

preflight() {
    if [ ! -f "$SOURCE_DIR/pyproject.toml" ] || [ ! -f "$SOURCE_DIR/systemd/$UNIT_NAME" ]; then
        echo "install.sh: $SOURCE_DIR is not a lockerd checkout" >&2
        exit 1
    fi
    if [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
        echo "install.sh: run as root (or use --dry-run)" >&2
        exit 1
    fi
    if ! "$PYTHON" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "install.sh: $PYTHON >= 3.11 with the venv module is required" \
            "(apt-get install python3-venv)" >&2
        exit 1
    fi
}

ensure_groups() {
    if ! getent group gpio >/dev/null; then
        # Raspberry Pi OS ships the gpio group and its udev rule; plain Debian does not.
        say "creating group gpio and a udev rule giving it /dev/gpiochip*"
        run groupadd --system gpio
        run install -d -m 0755 "$UDEV_DIR"
        if [ "$DRY_RUN" = 1 ]; then
            say "would write $UDEV_DIR/60-lockerd-gpio.rules"
        else
            printf '%s\n' 'SUBSYSTEM=="gpio", KERNEL=="gpiochip*", GROUP="gpio", MODE="0660"' \
                >"$UDEV_DIR/60-lockerd-gpio.rules"
            # Best effort: in an image build udevd is not running; the rule applies at boot.
            if udevadm control --reload-rules 2>/dev/null; then
                udevadm trigger --subsystem-match=gpio 2>/dev/null || true
            fi
        fi
    fi
    if ! getent group dialout >/dev/null; then
        run groupadd --system dialout
    fi
}

ensure_user() {
    if getent passwd "$SERVICE_USER" >/dev/null; then
        say "user $SERVICE_USER exists"
    else
        say "creating system user $SERVICE_USER"
        run useradd --system --user-group --home-dir /var/lib/locker --no-create-home \
            --shell /usr/sbin/nologin --comment "parcel locker daemon" "$SERVICE_USER"
    fi
    run usermod --append --groups gpio,dialout "$SERVICE_USER"
}

install_package() {
    if [ -x "$VENV/bin/python" ]; then
        say "virtualenv $VENV exists"
    else
        say "creating virtualenv $VENV"
        run install -d -m 0755 "$PREFIX"
        run "$PYTHON" -m venv "$VENV"
    fi
    # The cabinet and lcd extras only (no QR rendering, no web stack, no dev tools), at the
    # versions and hashes of the lock file (make lock), then the project itself without
    # dependencies.
    local lock="$SOURCE_DIR/requirements/cabinet.txt"
    if [ "$WITH_LGPIO" = 1 ]; then
        lock="$SOURCE_DIR/requirements/cabinet-lgpio.txt"
    fi
    say "installing the locked cabinet dependencies ($lock)"
    run "$VENV/bin/python" -m pip install --quiet --require-hashes -r "$lock"
    say "installing lockerd from $SOURCE_DIR"
    run "$VENV/bin/python" -m pip install --quiet --no-deps --no-build-isolation \
        --force-reinstall "$SOURCE_DIR"
    # On every user's PATH, so that `sudo -u locker lockerd --check-config ...` works.
    say "linking $BIN_DIR/lockerd"
    run install -d -m 0755 "$BIN_DIR"
    run ln -sfn "$VENV/bin/lockerd" "$BIN_DIR/lockerd"
}

install_unit() {
    say "installing $UNIT_DIR/$UNIT_NAME"
    run install -d -m 0755 "$UNIT_DIR"
    if [ "$DRY_RUN" = 1 ]; then
        say "would write $UNIT_DIR/$UNIT_NAME (install prefix $PREFIX)"
    else
        local tmp
        tmp="$(mktemp)"
        # The unit names /opt/lockerd; follow an overridden prefix.
        sed "s|/opt/lockerd|$PREFIX|g" "$SOURCE_DIR/systemd/$UNIT_NAME" >"$tmp"
        install -m 0644 "$tmp" "$UNIT_DIR/$UNIT_NAME"
        rm -f "$tmp"
    fi
}

install_config_dir() {
    say "configuration directory $ETC_DIR (root:$SERVICE_USER 0750)"
    run install -d -m 0750 -o root -g "$SERVICE_USER" "$ETC_DIR"
    if [ -e "$ETC_DIR/locker.toml" ]; then
        say "keeping existing $ETC_DIR/locker.toml"
    elif [ -f "$EXAMPLE_CONFIG" ]; then
        say "copying example configuration to $ETC_DIR/locker.toml"
        run install -m 0640 -o root -g "$SERVICE_USER" "$EXAMPLE_CONFIG" "$ETC_DIR/locker.toml"
    else
        say "no example configuration at $EXAMPLE_CONFIG: write $ETC_DIR/locker.toml yourself"
    fi
}

enable_unit() {
    if [ -d /run/systemd/system ]; then
        run systemctl daemon-reload
    else
        say "systemd is not running here (image build?): skipping daemon-reload"
    fi
    run systemctl enable "$UNIT_NAME"
}

next_steps() {
    if [ "$DRY_RUN" = 1 ]; then
        say "dry run finished: nothing was changed"
    fi
    cat <<EOF

lockerd is installed and enabled, not started. Next:
  1. Edit $ETC_DIR/locker.toml (or copy the one lockerctl locker add wrote); put the device
     key, CA, certificate and key files in $ETC_DIR, owned root:$SERVICE_USER, mode 0640:
       sudo install -m 0640 -o root -g $SERVICE_USER FILES... $ETC_DIR/
  2. Check it:   sudo -u $SERVICE_USER lockerd --check-config $ETC_DIR/locker.toml
  3. Check the device groups the unit allows exist on this kernel:
                 grep -E 'gpiochip|ttyUSB|ttyACM|ttyAMA' /proc/devices
  4. Start it:   systemctl start $UNIT_NAME && journalctl -u $UNIT_NAME -f
  5. Hardening:  systemd-analyze security $UNIT_NAME   (expected exposure <= 2.0)
EOF
}

main() {
    preflight
    if [ "$DRY_RUN" = 1 ]; then
        say "dry run: nothing will be changed"
    fi
    ensure_groups
    ensure_user
    install_package
    install_unit
    install_config_dir
    enable_unit
    next_steps
}

main
