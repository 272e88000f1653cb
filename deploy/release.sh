#!/usr/bin/env bash
# make release: static binaries for linux amd64, arm64 and armv7, a tarball
# each, a .deb for amd64 and arm64 (nfpm, version pinned below) and
# SHA256SUMS, all in dist/. Needs Go and git only (nfpm is built from the
# Go module proxy the first time).
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
NFPM=github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.48.0

# git describe, made a Debian/semver version: v1.2.3 -> 1.2.3,
# v1.2.3-4-gabc -> 1.2.3+4.gabc; without a tag 0.0.0+gabc; .dirty marks
# uncommitted changes.
# (Only a tag counts: an abbreviated hash may start with a digit too.)
if desc=$(git describe --tags --dirty --match 'v[0-9]*' 2>/dev/null); then
	version=$(printf %s "${desc#v}" | sed -e 's/-/+/' -e 's/-/./g')
else
	version="0.0.0+g$(git describe --always --dirty | sed -e 's/-/./g')"
fi
echo "release $version"

rm -rf dist build/release build/pkg
mkdir -p dist build/release build/pkg build/tools
ldflags="-s -w -X main.buildVersion=$version"
mtime=$(git log -1 --format=%ct)

for arch in amd64 arm64 armv7; do
	goarch=$arch goarm=
	[ "$arch" = armv7 ] && goarch=arm goarm=7
	out=build/release/linux_$arch
	for cmd in iotkv iotkv-device; do
		CGO_ENABLED=0 GOOS=linux GOARCH=$goarch GOARM=$goarm \
			$GO build -trimpath -ldflags="$ldflags" -o "$out/$cmd" ./cmd/$cmd
	done
	name=iotkv_${version}_linux_$arch
	stage=build/release/$name
	mkdir -p "$stage/examples" "$stage/systemd" "$stage/grafana" "$stage/prometheus"
	cp "$out/iotkv" "$out/iotkv-device" README.md "$stage/"
	cp docs/operations.md "$stage/"
	cp deploy/edge.yaml deploy/master.yaml deploy/device.yaml "$stage/examples/"
	cp deploy/systemd/*.service "$stage/systemd/"
	cp deploy/grafana/iotkv.json "$stage/grafana/"
	cp deploy/prometheus/rules.yml "$stage/prometheus/"
	tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$mtime" \
		-C build/release -cf - "$name" | gzip -n -9 >"dist/$name.tar.gz"
	echo "dist/$name.tar.gz"
done

# The container image's build context (deploy/Containerfile).
img=build/image
rm -rf "$img"
mkdir -p "$img/rootfs/usr/bin" "$img/rootfs/etc/ssl/certs" "$img/data"
cp build/release/linux_amd64/iotkv "$img/rootfs/usr/bin/"
printf 'root:x:0:0:root:/:/sbin/nologin\niotkv:x:65532:65532:iotkv:/var/lib/iotkv:/sbin/nologin\n' >"$img/rootfs/etc/passwd"
printf 'root:x:0:\niotkv:x:65532:\n' >"$img/rootfs/etc/group"
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
	cp /etc/ssl/certs/ca-certificates.crt "$img/rootfs/etc/ssl/certs/"
fi

GOBIN="$PWD/build/tools" $GO install "$NFPM"
for arch in amd64 arm64; do
	cp build/release/linux_$arch/iotkv build/release/linux_$arch/iotkv-device build/pkg/
	IOTKV_VERSION=$version IOTKV_ARCH=$arch SOURCE_DATE_EPOCH=$mtime \
		build/tools/nfpm package --config deploy/nfpm.yaml --packager deb \
		--target "dist/iotkv_${version}_$arch.deb"
done

(cd dist && sha256sum -- *.tar.gz *.deb >SHA256SUMS)
cat dist/SHA256SUMS
