#!/bin/sh
# The system user the units run as (no login, no home of its own: the
# state directory /var/lib/iotkv is made by systemd's StateDirectory=).
set -e
if ! getent group iotkv >/dev/null; then
	groupadd --system iotkv
fi
if ! getent passwd iotkv >/dev/null; then
	useradd --system --gid iotkv --home-dir /var/lib/iotkv --no-create-home \
		--shell /usr/sbin/nologin --comment "iotkv server" iotkv
fi
