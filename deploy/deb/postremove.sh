#!/bin/sh
# purge removes the user; the data in /var/lib/iotkv and the PKI in
# /etc/iotkv stay (delete them by hand when you mean it).
set -e
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
fi
if [ "$1" = purge ] && getent passwd iotkv >/dev/null; then
	userdel iotkv || true
fi
