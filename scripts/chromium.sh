#!/usr/bin/env bash
# Headless Chromium from Debian's packages, unpacked into .tools/chromium without root.
#
# The placement page's browser test (tests/ui) drives it with Playwright. Playwright's own
# browser download is not used (it fetches from outside the package registries); instead
# `apt-get download` fetches Debian's chromium-headless-shell, and every package of its
# Depends closure that this machine lacks, and `dpkg -x` unpacks them here. Nothing is
# installed system-wide, so neither `make test` nor this script needs root.
#
# Idempotent: when .tools/chromium already holds a browser that starts, it does nothing
# (and needs no network). Prints the path of the wrapper to run (it sets LD_LIBRARY_PATH
# to the unpacked libraries). apt's package lists are fetched into .tools/chromium/apt so
# that the machine's own lists (possibly stale or absent) do not matter.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEST=${MESHSERVE_CHROMIUM_DIR:-$ROOT/.tools/chromium}
WRAPPER=$DEST/bin/chromium
STAMP=$DEST/.installed
ROOTFS=$DEST/root
APT=$DEST/apt
MAIN_PACKAGE=chromium-headless-shell

works() {
  [[ -f $STAMP && -x $WRAPPER ]] && "$WRAPPER" --headless --no-sandbox --version >/dev/null 2>&1
}

if works; then
  echo "$WRAPPER"
  exit 0
fi

command -v apt-get >/dev/null || { echo "scripts/chromium.sh: needs apt-get and dpkg (Debian)" >&2; exit 1; }

rm -rf "$ROOTFS" "$DEST/bin" "$STAMP" "$APT/debs"
mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial" "$APT/debs" "$ROOTFS" "$DEST/bin"
apt_opts=(-o "Dir::State::Lists=$APT/lists" -o "Dir::Cache=$APT/cache" -o Debug::NoLocking=1 -o APT::Get::List-Cleanup=0)
if ((EUID == 0)); then
  apt_opts+=(-o APT::Sandbox::User=root)  # else apt warns that its _apt user cannot write here
fi

echo "scripts/chromium.sh: fetching Debian's package lists into $APT" >&2
apt-get "${apt_opts[@]}" -qq update >&2

installed() {
  [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) == installed ]]
}

# The Depends/Pre-Depends closure of the browser, first alternative of each, stopping at
# packages this machine has installed (the browser's own are always fetched).
declare -A seen=()
queue=("$MAIN_PACKAGE")
wanted=()
while ((${#queue[@]})); do
  pkg=${queue[0]}
  queue=("${queue[@]:1}")
  [[ -n ${seen[$pkg]:-} ]] && continue
  seen[$pkg]=1
  if [[ $pkg != chromium* ]] && installed "$pkg"; then
    continue
  fi
  record=$(apt-cache "${apt_opts[@]}" show --no-all-versions "$pkg" 2>/dev/null) || continue  # a virtual package
  wanted+=("$pkg")
  deps=$(sed -n 's/^\(Pre-\)\{0,1\}Depends: //p' <<<"$record" | tr ',' '\n')
  while read -r dep; do
    dep=${dep%%|*}
    dep=${dep%%(*}
    dep=${dep%%:*}
    dep=${dep//[[:space:]]/}
    [[ -n $dep ]] && queue+=("$dep")
  done <<<"$deps"
done

echo "scripts/chromium.sh: downloading ${wanted[*]}" >&2
(cd "$APT/debs" && apt-get "${apt_opts[@]}" -qq download "${wanted[@]}" >&2)
for deb in "$APT/debs"/*.deb; do
  dpkg -x "$deb" "$ROOTFS"
done

binary=$ROOTFS/usr/lib/chromium/chromium-headless-shell
[[ -x $binary ]] || { echo "scripts/chromium.sh: $binary missing after unpacking" >&2; exit 1; }
libdirs=$(find "$ROOTFS" -name '*.so*' \( -type f -o -type l \) -printf '%h\n' | sort -u | paste -sd:)

cat >"$WRAPPER" <<EOF
#!/bin/sh
# Debian's headless Chromium unpacked by scripts/chromium.sh, with its libraries.
LD_LIBRARY_PATH="$libdirs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$binary" "\$@"
EOF
chmod +x "$WRAPPER"

missing=$(LD_LIBRARY_PATH=$libdirs ldd "$binary" | grep 'not found' || true)
if [[ -n $missing ]]; then
  echo "scripts/chromium.sh: libraries still missing:" >&2
  echo "$missing" >&2
  exit 1
fi

dpkg-deb -f "$APT/debs/${MAIN_PACKAGE}_"*.deb Version >"$STAMP"
rm -rf "$APT/debs" "$APT/cache"
if ! works; then
  "$WRAPPER" --headless --no-sandbox --version >&2 || true
  rm -f "$STAMP"
  echo "scripts/chromium.sh: the unpacked browser does not start" >&2
  exit 1
fi
echo "$WRAPPER"
