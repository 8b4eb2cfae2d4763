#!/bin/sh
# Turns a staged `make install DESTDIR=ROOT PREFIX=/usr …` tree into a Debian package:
# stripped binary, gzipped man pages, copyright, changelog.Debian.gz, control, conffiles,
# md5sums. Run by `make deb`; the package is written to OUT.
# Usage: build-deb.sh ROOT OUT PACKAGE VERSION MAINTAINER DATE
set -eu
root=$1 out=$2 package=$3 version=$4 maintainer=$5 date=$6
here=$(dirname "$0")
arch=$(dpkg --print-architecture)
doc="$root/usr/share/doc/$package"

strip --strip-unneeded --remove-section=.comment --remove-section=.note "$root/usr/sbin/rinetd"
gzip -9nf "$root"/usr/share/man/man*/*
# Debian's copyright file holds the licence; a second copy is what lintian calls extra.
rm -f "$doc/LICENSE"
install -m 644 "$here/copyright" "$doc/copyright"
printf '%s (%s) unstable; urgency=medium\n\n  * Built from the rinetd source tree with make deb.\n\n -- %s  %s\n' \
	"$package" "$version" "$maintainer" "$date" | gzip -9n > "$doc/changelog.Debian.gz"
chmod 644 "$doc/changelog.Debian.gz"

# The C library versions the binary needs (what dpkg-shlibdeps would find for it).
glibc=$(objdump -T "$root/usr/sbin/rinetd" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
# Packed relative relocations (build.rs) are read by glibc 2.36 on; the binary names that
# need as a version of its own, which objdump -T does not list.
if objdump -p "$root/usr/sbin/rinetd" | grep -q 'GLIBC_ABI_DT_RELR' \
	&& [ "$(printf '%s\n2.36\n' "$glibc" | sort -V | tail -1)" = 2.36 ]; then
	glibc=2.36
fi
depends="libc6 (>= $glibc)"
if objdump -p "$root/usr/sbin/rinetd" | grep -q 'NEEDED.*libgcc_s'; then
	depends="$depends, libgcc-s1 (>= 4.2)"
fi

mkdir -p "$root/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s|@PACKAGE@|$package|" -e "s|@VERSION@|$version|" -e "s|@ARCH@|$arch|" \
	-e "s|@MAINTAINER@|$maintainer|" -e "s|@SIZE@|$size|" -e "s|@DEPENDS@|$depends|" \
	"$here/control.in" > "$root/DEBIAN/control"
echo /etc/rinetd.conf > "$root/DEBIAN/conffiles"
(cd "$root" && find . -type f ! -path './DEBIAN/*' | sed 's|^\./||' | LC_ALL=C sort | xargs md5sum) > "$root/DEBIAN/md5sums"
find "$root" -type d -exec chmod 755 {} +
chmod 644 "$root/DEBIAN/control" "$root/DEBIAN/conffiles" "$root/DEBIAN/md5sums"

mkdir -p "$out"
dpkg-deb --root-owner-group -Zxz --build "$root" "$out/${package}_${version}_${arch}.deb"
