#!/usr/bin/env bash
# Install Debian's Chromium for the browser test (Playwright drives it; Playwright's own browser
# download is not used). Does nothing when it is already there.
set -euo pipefail
if [ -x "${AIRLOOP_CHROMIUM:-/usr/bin/chromium}" ]; then exit 0; fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-browser: no apt-get here; install Chromium and set AIRLOOP_CHROMIUM to its path" >&2; exit 2
fi
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "install-browser: installing Debian's chromium package (once per machine)"
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null \
  || { $sudo apt-get update -q >/dev/null && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }
/usr/bin/chromium --version
