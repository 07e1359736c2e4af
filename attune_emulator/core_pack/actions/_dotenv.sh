# Shared helper for the core pack's shell actions (sourced, not an action).
#
# attune_read_dotenv: read the dotenv parameter document the worker writes on stdin
# (one `key='value'` per line, values quoted the shell way, so a quoted value may span lines)
# into the associative array P, which the caller declares with `declare -A P`.
attune_read_dotenv() {
    local data rest key val chunk
    if [ -t 0 ]; then
        return 0
    fi
    data=$(cat; printf x)
    data=${data%x}
    rest=$data
    while [ -n "$rest" ]; do
        if [[ $rest == $'\n'* ]]; then
            rest=${rest#?}
            continue
        fi
        key=${rest%%=*}
        if [[ $key == "$rest" || $key == *$'\n'* ]]; then
            # A line without `=`: skip it.
            if [[ $rest == *$'\n'* ]]; then rest=${rest#*$'\n'}; else rest=""; fi
            continue
        fi
        rest=${rest#*=}
        val=""
        while [ -n "$rest" ]; do
            case $rest in
                "'"*)
                    rest=${rest#?}
                    chunk=${rest%%"'"*}
                    val+=$chunk
                    rest=${rest#"$chunk"}
                    rest=${rest#?}
                    ;;
                "\\"*)
                    val+=${rest:1:1}
                    rest=${rest:2}
                    ;;
                $'\n'*)
                    rest=${rest#?}
                    break
                    ;;
                *)
                    chunk=${rest%%[\'\\$'\n']*}
                    val+=$chunk
                    rest=${rest#"$chunk"}
                    ;;
            esac
        done
        P[$key]=$val
    done
}

# attune_json_string VALUE: print VALUE as a JSON string literal.
attune_json_string() {
    local s=$1 i c
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//$'\n'/\\n}
    s=${s//$'\r'/\\r}
    s=${s//$'\t'/\\t}
    s=${s//$'\b'/\\b}
    s=${s//$'\f'/\\f}
    if [[ $s == *[$'\x01'-$'\x1f']* ]]; then
        for i in $(seq 1 31); do
            printf -v c "\\x$(printf '%02x' "$i")"
            s=${s//"$c"/$(printf '\\u%04x' "$i")}
        done
    fi
    printf '"%s"' "$s"
}
