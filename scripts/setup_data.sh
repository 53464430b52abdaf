#!/usr/bin/env bash
# Make sure every real data set the evidence suite reads is on this machine (docs/DATA.md):
#   - Debian packages: dataset-fashion-mnist, sword-text-sparv, sword-text-web, libsword-utils;
#   - the apt lists with English package descriptions (*_Packages + *_i18n_Translation-en under
#     /var/lib/apt/lists). Container images often set Acquire::Languages "none", so a plain
#     `apt-get update` leaves no Translation-en list: we ask for English explicitly and check.
# Each check prints one line; a missing input is fetched; if it is still missing, exit 1 with the fix.
set -uo pipefail
# The paths and the apt-get command can be overridden (the tests run this script against stubs).
LISTS=${RDROP_APT_LISTS:-/var/lib/apt/lists}
FASHION=${RDROP_FASHION_DIR:-/usr/share/datasets/fashion-mnist}
SWORD=${RDROP_SWORD_DIR:-/usr/share/sword/modules/texts/ztext}
APT_GET=${RDROP_APT_GET:-apt-get}
PACKAGES=(dataset-fashion-mnist sword-text-sparv sword-text-web libsword-utils)
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"

have_packages() {
  [ -d "$FASHION" ] && command -v mod2imp >/dev/null \
    && [ -d "$SWORD/spaRV1909eb" ] && [ -d "$SWORD/engWEB2015eb" ]
}
have_lists() {
  compgen -G "$LISTS/*_Packages*" >/dev/null && compgen -G "$LISTS/*_i18n_Translation-en*" >/dev/null
}
apt_update() {
  echo "data: apt-get update (with English descriptions: -o Acquire::Languages=en)"
  $SUDO $APT_GET update -o Acquire::Languages=en "$@" | sed 's/^/  apt: /'
}

updated=0
if have_lists; then
  echo "data: apt lists with English descriptions present"
else
  apt_update; updated=1
  if ! have_lists; then
    # apt keeps an unchanged InRelease and may skip index targets it did not fetch before:
    # drop the cached Release files so the next update fetches every index again.
    echo "data: no Translation-en list after the update; forcing a full re-fetch"
    $SUDO rm -f "$LISTS"/*InRelease "$LISTS"/*_Release "$LISTS"/*_Release.gpg
    apt_update -o Acquire::IndexTargets::deb::Translations::DefaultEnabled=true
  fi
  if ! have_lists; then
    echo "data: ERROR: still no *_i18n_Translation-en* list under $LISTS." >&2
    echo "  Fix: check /etc/apt/apt.conf.d for Acquire::Languages, then run" >&2
    echo "  'apt-get update -o Acquire::Languages=en' as root and rerun make." >&2
    exit 1
  fi
  echo "data: apt lists with English descriptions fetched"
fi

if have_packages; then
  echo "data: Debian data packages present (${PACKAGES[*]})"
else
  [ "$updated" = 1 ] || apt_update
  echo "data: apt-get install ${PACKAGES[*]}"
  if ! DEBIAN_FRONTEND=noninteractive $SUDO $APT_GET install -y -q "${PACKAGES[@]}" \
       | grep -E '^(Setting up|E:)' | sed 's/^/  apt: /'; then :; fi
  if ! have_packages; then
    echo "data: ERROR: the Debian data packages did not install: ${PACKAGES[*]}" >&2
    echo "  Fix: run 'apt-get install ${PACKAGES[*]}' as root (or with sudo) and rerun make." >&2
    exit 1
  fi
  echo "data: Debian data packages installed"
fi
