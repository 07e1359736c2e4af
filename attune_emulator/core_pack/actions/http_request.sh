#!/bin/bash
# core.http_request: perform one HTTP request with curl and print a JSON summary of the response.
# Parameters arrive as dotenv on stdin; object parameters arrive flattened (headers.Name='v',
# query_params.k='v'). HTTP error statuses still exit 0 (success=false); transport errors exit 1.
set -u
. "$(dirname "$0")/_dotenv.sh"
declare -A P=()
attune_read_dotenv

fail() {
    printf '{"success":false,"error":%s}\n' "$(attune_json_string "$1")"
    echo "$1${2:+: $2}" >&2
    exit 1
}

url=${P[url]-}
[ -z "$url" ] && fail "url is required"
method=$(printf '%s' "${P[method]-GET}" | tr '[:lower:]' '[:upper:]')
[ -z "$method" ] && method=GET
case $method in
    GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS) ;;
    *) fail "Unsupported HTTP method: $method" ;;
esac
timeout=${P[timeout]-30}
[[ $timeout =~ ^[0-9]+$ ]] || timeout=30
verify_ssl=${P[verify_ssl]-true}
follow=${P[follow_redirects]-true}
max_redirects=${P[max_redirects]-10}
[[ $max_redirects =~ ^[0-9]+$ ]] || max_redirects=10
auth_type=${P[auth_type]-none}

work=$(mktemp -d "${TMPDIR:-/tmp}/attune-http.XXXXXX")
trap 'rm -rf "$work"' EXIT

args=(-sS -X "$method" --max-time "$timeout" -o "$work/body" -D "$work/headers"
      -w '%{http_code} %{time_total} %{url_effective}')
[ "$method" = HEAD ] && args=(-sS -I --max-time "$timeout" -o "$work/body" -D "$work/headers"
      -w '%{http_code} %{time_total} %{url_effective}')
[ "$verify_ssl" = false ] && args+=(-k)
if [ "$follow" != false ]; then
    args+=(-L --max-redirs "$max_redirects")
fi

# Headers (flattened object) and query parameters.
has_content_type=false
for key in "${!P[@]}"; do
    case $key in
        headers.*)
            name=${key#headers.}
            args+=(-H "$name: ${P[$key]}")
            shopt -s nocasematch
            [[ $name == content-type ]] && has_content_type=true
            shopt -u nocasematch
            ;;
    esac
done
query=""
for key in $(printf '%s\n' "${!P[@]}" | grep '^query_params\.' | sort); do
    name=${key#query_params.}
    enc_name=$(printf '%s' "$name" | curl -Gso /dev/null -w '%{url_effective}' --data-urlencode @- "http://x/" | cut -c 11-)
    enc_val=$(printf '%s' "${P[$key]}" | curl -Gso /dev/null -w '%{url_effective}' --data-urlencode @- "http://x/" | cut -c 11-)
    query+="${query:+&}${enc_name}=${enc_val}"
done
if [ -n "$query" ]; then
    if [[ $url == *\?* ]]; then url+="&$query"; else url+="?$query"; fi
fi

case $auth_type in
    basic) args+=(-u "${P[auth_username]-}:${P[auth_password]-}") ;;
    bearer) args+=(-H "Authorization: Bearer ${P[auth_token]-}") ;;
esac

# Body: `body` (string) wins; `json_body` is used when it arrives as a JSON string.
if [ -n "${P[body]+x}" ] && [ -n "${P[body]}" ]; then
    printf '%s' "${P[body]}" > "$work/request"
    args+=(--data-binary "@$work/request")
elif [ -n "${P[json_body]+x}" ] && [ -n "${P[json_body]}" ]; then
    printf '%s' "${P[json_body]}" > "$work/request"
    args+=(--data-binary "@$work/request")
    $has_content_type || args+=(-H "Content-Type: application/json")
fi

meta=$(curl "${args[@]}" -- "$url" 2>"$work/curl_err")
code=$?
if [ "$code" -ne 0 ]; then
    case $code in
        6) fail "Could not resolve host" "$(cat "$work/curl_err")" ;;
        7) fail "Failed to connect to host" "$(cat "$work/curl_err")" ;;
        28) fail "Request timed out after ${timeout} seconds" "$(cat "$work/curl_err")" ;;
        35|51|58|60) fail "SSL error" "$(cat "$work/curl_err")" ;;
        47) fail "Too many redirects" "$(cat "$work/curl_err")" ;;
        *) fail "Request failed (curl exit $code)" "$(cat "$work/curl_err")" ;;
    esac
fi
status=${meta%% *}
rest=${meta#* }
elapsed=${rest%% *}
final_url=${rest#* }
elapsed_ms=$(awk -v t="$elapsed" 'BEGIN { printf "%d", t * 1000 }')

# Response headers of the last response (after redirects).
headers_json=""
block=""
while IFS= read -r line || [ -n "$line" ]; do
    line=${line%$'\r'}
    if [[ $line == HTTP/* ]]; then
        block=""
        continue
    fi
    [ -z "$line" ] && continue
    [[ $line != *:* ]] && continue
    name=${line%%:*}
    value=${line#*:}
    value=${value# }
    block+="${block:+,}$(attune_json_string "$name"):$(attune_json_string "$value")"
done < "$work/headers"
headers_json="{${block}}"

body=$(cat "$work/body"; printf x)
body=${body%x}
json_field=""
if command -v jq >/dev/null 2>&1 && [ -s "$work/body" ]; then
    if parsed=$(jq -c . "$work/body" 2>/dev/null) && [ -n "$parsed" ] && [ "$(printf '%s\n' "$parsed" | wc -l)" -eq 1 ]; then
        json_field=",\"json\":$parsed"
    fi
fi
success=false
[[ $status =~ ^2[0-9][0-9]$ ]] && success=true

printf '{"status_code":%s,"headers":%s,"body":%s%s,"elapsed_ms":%s,"url":%s,"success":%s}\n' \
    "$status" "$headers_json" "$(attune_json_string "$body")" "$json_field" "$elapsed_ms" \
    "$(attune_json_string "$final_url")" "$success"
