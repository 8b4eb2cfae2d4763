#!/bin/sh
# Unpacks Debian's xinetd, openbsd-inetd and inetutils-inetd packages into DEST (default
# target/debian-stock): their stock service files are what the compatibility tests convert,
# check and serve. Fetched files are never committed; an unpacked package is not fetched again.
# Layout: DEST/PACKAGE/root (dpkg-deb -x) and DEST/PACKAGE/control (dpkg-deb -e).
set -eu
dest=${1:-target/debian-stock}
mkdir -p "$dest"
for package in xinetd openbsd-inetd inetutils-inetd; do
	folder="$dest/$package"
	[ -f "$folder/.unpacked" ] && continue
	rm -rf "$folder"
	mkdir -p "$folder"
	# A fresh machine may have no package lists yet: update once, then try again.
	if ! (cd "$folder" && apt-get download "$package" >/dev/null 2>&1); then
		apt-get update -qq >/dev/null
		(cd "$folder" && apt-get download "$package" >/dev/null 2>&1)
	fi
	deb=$(ls "$folder"/*.deb)
	dpkg-deb -x "$deb" "$folder/root"
	dpkg-deb -e "$deb" "$folder/control"
	touch "$folder/.unpacked"
done
