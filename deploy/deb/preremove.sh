#!/bin/sh
# Removing the package (not upgrading it) stops the servers first.
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
	systemctl stop iotkv-edge.service iotkv-master.service || true
fi
