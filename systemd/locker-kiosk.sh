#!/bin/sh
# The cabinet screen's kiosk browser (DESIGN section 12): waits until lockerd's front panel
# answers, then shows it full screen, and starts the browser again if it ever exits.
# Run by systemd/locker-kiosk.service (a user unit of the graphical session), or from the
# compositor's autostart. PANEL_URL defaults to lockerd's [panel] listen of the example config.
set -eu

PANEL_URL="${PANEL_URL:-http://127.0.0.1:8088/}"
PROFILE="${XDG_RUNTIME_DIR:-/tmp}/locker-kiosk"
BROWSER="$(command -v chromium-browser || command -v chromium || true)"
if [ -z "$BROWSER" ]; then
    echo "locker-kiosk: no chromium-browser or chromium on PATH" >&2
    exit 1
fi
case "${WAYLAND_DISPLAY:-}" in
    "") OZONE=x11 ;;
    *) OZONE=wayland ;;
esac

wait_for_panel() {
    # python3 is on every Raspberry Pi OS image; no curl needed.
    until python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
        "${PANEL_URL}healthz" 2>/dev/null; do
        sleep 2
    done
}

while :; do
    wait_for_panel
    "$BROWSER" --kiosk --noerrdialogs --disable-infobars --no-first-run \
        --disable-session-crashed-bubble --password-store=basic \
        --ozone-platform="$OZONE" --touch-events=enabled --overscroll-history-navigation=0 \
        --check-for-update-interval=31536000 --user-data-dir="$PROFILE" "$PANEL_URL" || true
    sleep 2
done
