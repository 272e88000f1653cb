#!/bin/sh
# Units are installed but not enabled or started: the PKI, the accounts
# file and /etc/iotkv/edge.yaml come first (see /usr/share/doc/iotkv).
set -e
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
	# An upgrade restarts what was running.
	for u in iotkv-edge.service iotkv-master.service; do
		if systemctl is-active --quiet "$u"; then
			systemctl try-restart "$u" || true
		fi
	done
fi
