#!/usr/bin/env bash
# The `systemd-analyze security` exposure of the iotkv units (0 is fully
# confined, 10 fully exposed), one table row each:
#   bash deploy/unit-scores.sh [UNIT-FILE...]    print the rows (default: deploy/systemd/*.service)
#   bash deploy/unit-scores.sh --readme FILE     write them into FILE between its
#                                                <!-- unit-security --> markers
# make release-check prints them for the installed units; a test in interop
# checks that README.md holds what this script writes.
set -euo pipefail
cd "$(dirname "$0")/.."
readme=
if [ "${1:-}" = --readme ]; then
	readme=${2:?--readme needs a file}
	shift 2
fi
[ $# -gt 0 ] || set -- deploy/systemd/*.service
rows() {
	echo "| unit | exposure ($(systemd-analyze --version | head -1 | cut -d' ' -f1,2)) |"
	echo "| --- | --- |"
	for u in "$@"; do
		score=$(systemd-analyze security --offline=true "$u" 2>/dev/null |
			sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]* [A-Z]*\).*/\1/p')
		[ -n "$score" ] || { echo "unit-scores: systemd-analyze security gave no score for $u" >&2; exit 1; }
		echo "| $(basename "$u") | $score |"
	done
}
if [ -z "$readme" ]; then
	rows "$@"
	exit 0
fi
begin='<!-- unit-security: bash deploy/unit-scores.sh --readme README.md -->'
end='<!-- /unit-security -->'
grep -qxF "$begin" "$readme" && grep -qxF "$end" "$readme" || { echo "unit-scores: $readme lacks the lines $begin and $end" >&2; exit 1; }
table=$(rows "$@")
tmp=$(mktemp)
awk -v b="$begin" -v e="$end" -v t="$table" '
	$0 == b { print; print t; skip = 1; next }
	$0 == e { skip = 0 }
	!skip { print }' "$readme" >"$tmp"
cat "$tmp" >"$readme"
rm -f "$tmp"
