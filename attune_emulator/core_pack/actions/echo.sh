#!/bin/bash
# core.echo: print `message` exactly, without a trailing newline.
set -u
. "$(dirname "$0")/_dotenv.sh"
declare -A P=()
attune_read_dotenv
printf '%s' "${P[message]-Hello, World!}"
