#!/usr/bin/env bash
# make release-check: what CI checks on the artefacts of make release.
#  - the arm64 and armv7 binaries run `iotkv version` and an edge that
#    starts, answers /readyz and stops on SIGTERM with status 0, under
#    qemu-user-static;
#  - the amd64 .deb installs with dpkg -i, creates the iotkv user, puts the
#    units and /etc/iotkv in place, and systemd-analyze verify accepts the
#    units (then the package is purged again);
#  - the container image builds with podman, and its configuration (user,
#    ports, volume, health check) is what deploy/Containerfile says.
# Running the image is not checked: podman cannot run containers on the CI
# machine's kernel.
set -euo pipefail
cd "$(dirname "$0")/.."
need() { command -v "$1" >/dev/null || { echo "release-check: $1 is missing (apt-get install $2)"; exit 1; }; }
need qemu-aarch64-static qemu-user-static
need qemu-arm-static qemu-user-static
need systemd-analyze systemd
need podman podman
need dpkg dpkg
need jq jq
version=$(sed -n 's/^\([0-9a-f]\{64\}\)  iotkv_\(.*\)_amd64\.deb$/\2/p' dist/SHA256SUMS)
[ -n "$version" ] || { echo "release-check: no .deb in dist/SHA256SUMS: run make release first"; exit 1; }
for f in iotkv_${version}_linux_{amd64,arm64,armv7}.tar.gz iotkv_${version}_{amd64,arm64}.deb; do
	[ -s "dist/$f" ] || { echo "release-check: dist/$f is missing"; exit 1; }
done
(cd dist && sha256sum --quiet -c SHA256SUMS)
tmp=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	rm -rf "$tmp"
}
trap cleanup EXIT
host=build/release/linux_amd64/iotkv

# A PKI and an accounts file for the edges, made by the amd64 binary.
$host certs init --dir "$tmp/certs" >/dev/null
$host certs issue --dir "$tmp/certs" --name edge1 --role edge >/dev/null
$host users add --file "$tmp/accounts.json" --name admin --role admin --password admin-secret >/dev/null

for arch in arm64 armv7; do
	qemu=qemu-aarch64-static
	[ "$arch" = armv7 ] && qemu=qemu-arm-static
	bin=build/release/linux_$arch/iotkv
	file "$bin" | grep -q 'statically linked' || { echo "release-check: $bin is not static: $(file "$bin")"; exit 1; }
	out=$($qemu "$bin" version)
	case $out in "iotkv $version go"*) ;; *) echo "release-check: $arch version printed '$out', want iotkv $version"; exit 1 ;; esac
	$qemu build/release/linux_$arch/iotkv-device --help >/dev/null 2>&1 || [ $? -eq 2 ] # usage: exit 2, not a crash
	addr=$tmp/addr-$arch.json
	$qemu "$bin" edge --id edge1 --data "$tmp/data-$arch" --certs "$tmp/certs" --accounts "$tmp/accounts.json" \
		--mqtt-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 --addr-file "$addr" 2>"$tmp/edge-$arch.log" &
	pid=$!
	pids+=("$pid")
	ready=
	for _ in $(seq 1 240); do # 120 s: qemu on a loaded 2-core machine
		if [ -s "$addr" ] && $host healthcheck --ca "$tmp/certs/ca.crt" \
			--url "https://$(jq -r .https "$addr")/readyz" >/dev/null 2>&1; then
			ready=1
			break
		fi
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.5
	done
	if [ -z "$ready" ]; then
		echo "release-check: the $arch edge did not become ready:"; cat "$tmp/edge-$arch.log"; exit 1
	fi
	kill -TERM "$pid"
	status=0
	wait "$pid" || status=$?
	if [ "$status" -ne 0 ]; then
		echo "release-check: the $arch edge exited $status on SIGTERM:"; cat "$tmp/edge-$arch.log"; exit 1
	fi
	echo "ok $arch: version, edge ready and stopped under $qemu"
done

# The amd64 .deb on this machine, purged again afterwards.
if dpkg -s iotkv >/dev/null 2>&1; then dpkg --purge iotkv >/dev/null; fi
if getent passwd iotkv >/dev/null; then
	echo "release-check: a user iotkv exists before the install; the check needs it absent"; exit 1
fi
trap 'dpkg --purge iotkv >/dev/null 2>&1 || true; cleanup' EXIT
dpkg -i "dist/iotkv_${version}_amd64.deb"
getent passwd iotkv | grep -q ':/var/lib/iotkv:/usr/sbin/nologin$' || { echo "release-check: no system user iotkv"; getent passwd iotkv; exit 1; }
for f in /usr/bin/iotkv /usr/bin/iotkv-device /lib/systemd/system/iotkv-edge.service /lib/systemd/system/iotkv-master.service \
	/etc/iotkv/edge.yaml /etc/iotkv/master.yaml /etc/iotkv/device.yaml /usr/share/doc/iotkv/README.md \
	/usr/share/doc/iotkv/operations.md; do
	[ -e "$f" ] || { echo "release-check: the .deb did not install $f"; exit 1; }
done
[ "$(/usr/bin/iotkv version | cut -d' ' -f2)" = "$version" ] || { echo "release-check: /usr/bin/iotkv is not $version"; exit 1; }
/usr/bin/iotkv edge --config /etc/iotkv/edge.yaml --print-config >/dev/null
/usr/bin/iotkv master --config /etc/iotkv/master.yaml --print-config >/dev/null
systemd-analyze verify /lib/systemd/system/iotkv-edge.service /lib/systemd/system/iotkv-master.service
echo "ok units: systemd-analyze verify; systemd-analyze security exposure (README.md, deploy/unit-scores.sh):"
bash deploy/unit-scores.sh /lib/systemd/system/iotkv-edge.service /lib/systemd/system/iotkv-master.service
# An upgrade (the same package again) keeps an edited configuration file
# and the data directory.
echo '# edited by the operator' >>/etc/iotkv/edge.yaml
mkdir -p /var/lib/iotkv/edge && echo kept >/var/lib/iotkv/edge/release-check
dpkg -i "dist/iotkv_${version}_amd64.deb" >/dev/null
grep -qx '# edited by the operator' /etc/iotkv/edge.yaml || { echo "release-check: the upgrade replaced the edited /etc/iotkv/edge.yaml"; exit 1; }
[ "$(cat /var/lib/iotkv/edge/release-check)" = kept ] || { echo "release-check: the upgrade lost /var/lib/iotkv"; exit 1; }
rm -f /var/lib/iotkv/edge/release-check
rmdir /var/lib/iotkv/edge /var/lib/iotkv 2>/dev/null || true
dpkg --purge iotkv >/dev/null
! getent passwd iotkv >/dev/null || { echo "release-check: purge left the iotkv user"; exit 1; }
echo "ok .deb: installed, user iotkv, units verified, upgraded keeping an edited edge.yaml and the data, purged"

# The container image (amd64): built, its configuration inspected in the
# docker archive podman saves (podman 4's image inspect does not show the
# HEALTHCHECK of a docker-format image; the archive's config does).
tag=localhost/iotkv-release-check:$$
start=$(date +%s)
podman build --quiet --format docker -f deploy/Containerfile -t "$tag" build/image >/dev/null
trap 'podman rmi -f "$tag" >/dev/null 2>&1 || true; cleanup' EXIT
build_s=$(($(date +%s) - start))
mkdir "$tmp/image"
podman save --quiet --format docker-archive -o "$tmp/image.tar" "$tag"
tar -xf "$tmp/image.tar" -C "$tmp/image" manifest.json
config=$(jq -r '.[0].Config' "$tmp/image/manifest.json")
tar -xf "$tmp/image.tar" -C "$tmp/image" "$config"
cfg=$(jq -c .config "$tmp/image/$config")
check() { # jq-expression description
	jq -e "$1" >/dev/null <<<"$cfg" || { echo "release-check: image: $2: $cfg"; exit 1; }
}
check '.User == "65532:65532"' "runs as a non-root user"
check '.ExposedPorts | has("8883/tcp") and has("8443/tcp") and has("9443/tcp")' "exposes 8883, 8443, 9443"
check '.Volumes | has("/var/lib/iotkv")' "a volume for the data"
check '.Entrypoint == ["/usr/bin/iotkv"]' "the entrypoint is iotkv"
check '.Healthcheck.Test[1:3] == ["/usr/bin/iotkv", "healthcheck"]' "a HEALTHCHECK running iotkv healthcheck"
layers=$(jq '.[0].Layers | length' "$tmp/image/manifest.json")
[ "$layers" -le 3 ] || { echo "release-check: image has $layers layers, want a scratch image of at most 3"; exit 1; }
size=$(podman image inspect "$tag" --format '{{.Size}}')
echo "ok image: $size bytes ($((size / 1024 / 1024)) MiB), $layers layers, built in ${build_s}s; user, ports, volume, health check"
