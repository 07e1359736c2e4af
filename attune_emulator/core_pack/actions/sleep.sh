#!/bin/bash
# core.sleep: sleep `seconds` (0-3600, fractions allowed), then print `message` or a summary.
set -u
. "$(dirname "$0")/_dotenv.sh"
declare -A P=()
attune_read_dotenv
seconds=${P[seconds]-}
if [ -z "$seconds" ]; then
    echo "seconds is required" >&2
    exit 1
fi
if ! [[ $seconds =~ ^[0-9]+(\.[0-9]+)?$ ]]; then
    echo "seconds must be a number between 0 and 3600 (got '$seconds')" >&2
    exit 1
fi
if [ "${seconds%%.*}" -gt 3600 ] || { [ "${seconds%%.*}" -eq 3600 ] && [[ $seconds == *.*[1-9]* ]]; }; then
    echo "seconds must be between 0 and 3600 (got '$seconds')" >&2
    exit 1
fi
sleep "$seconds"
if [ -n "${P[message]-}" ]; then
    printf '%s\n' "${P[message]}"
else
    printf 'Slept for %s seconds\n' "$seconds"
fi
