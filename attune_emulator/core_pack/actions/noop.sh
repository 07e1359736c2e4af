#!/bin/bash
# core.noop: do nothing, optionally print `message`, and exit with `exit_code` (default 0).
set -u
. "$(dirname "$0")/_dotenv.sh"
declare -A P=()
attune_read_dotenv
code=${P[exit_code]-0}
[ -z "$code" ] && code=0
if ! [[ $code =~ ^[0-9]+$ ]] || [ "$code" -gt 255 ]; then
    echo "exit_code must be an integer between 0 and 255 (got '$code')" >&2
    exit 1
fi
if [ -n "${P[message]-}" ]; then
    printf '%s\n' "${P[message]}"
fi
exit "$code"
