#!/usr/bin/env bash
# attune-e2e: set up and run the end-to-end suite (see --help).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$REPO_ROOT"

CONFIG="${ATTUNE_E2E_CONFIG:-$REPO_ROOT/config.e2e.yaml}"
VENV="$REPO_ROOT/.venv"
PY="$VENV/bin/python"

usage() {
    cat <<'EOF'
Usage: ./run_e2e_tests.sh [--all | --unit | --bench | --help] [PYTEST ARGS...]

Sets up what the suite needs, then runs pytest from the repository root:
  1. system packages: when no PostgreSQL server (/usr/lib/postgresql/*/bin/postgres) or no
     rabbitmq-server is installed and the URLs in config.e2e.yaml do not answer, installs
     `postgresql rabbitmq-server bubblewrap` with apt-get (as root; otherwise it stops and says
     what to install). System services are not started: the suite runs its own PostgreSQL and
     RabbitMQ on the configured ports, with data under .state/. Reports whether node/npm exist.
     Skipped when ATTUNE_API_URL names an external target (nothing is started then).
  2. Python: creates .venv (python3 -m venv) if missing and installs requirements.txt and
     requirements-test.txt whenever their SHA-256 changed.
  3. pytest: `.venv/bin/python -m pytest ARGS`. Without path arguments, pytest.ini's testpaths
     (the tiers under tests/e2e) run. The suite's conftest starts the embedded stack.

Options handled here (anything else goes to pytest):
  --all    run tests/unit first, then the tiers (two pytest runs); PYTEST ARGS apply to the tier
           run only. Fails if either run fails; a run that collects no tests (exit 5) fails too.
  --unit   run tests/unit only (PYTEST ARGS are passed on).
  --bench  run the benchmark instead of pytest: `python -m bench ARGS` (README, Performance):
           the plan's performance targets measured against the embedded stack (or
           ATTUNE_API_URL); table on the console, raw figures in reports/bench.json.
  --help   show this text.

Examples:
  ./run_e2e_tests.sh                      # tiers 1-3
  ./run_e2e_tests.sh --all                # unit self-tests, then tiers 1-3 (CI)
  ./run_e2e_tests.sh -m timer             # one marker
  ./run_e2e_tests.sh tests/e2e/tier1 -x   # one tier, stop at the first failure

Environment:
  ATTUNE_E2E_CONFIG      configuration file (default: config.e2e.yaml)
  ATTUNE__SECTION__KEY   configuration overrides, e.g. ATTUNE__DATABASE__URL
  ATTUNE_E2E_SKIP_APT=1  never call apt-get
  ATTUNE_API_URL         test this external deployment instead (see README: ATTUNE_WS_URL, DATABASE_URL)
EOF
}

step() { printf '==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

MODE=run
ARGS=()
for arg in "$@"; do
    case "$arg" in
        --all) MODE=all ;;
        --unit) MODE=unit ;;
        --bench) MODE=bench ;;
        -h|--help) usage; exit 0 ;;
        *) ARGS+=("$arg") ;;
    esac
done

# ---------------------------------------------------------------------------------------------
# 1. system packages

have_pg_server() {
    compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null && return 0
    command -v postgres >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1
}
have_rabbitmq() {
    [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || command -v rabbitmq-server >/dev/null 2>&1
}
# "host port" of a URL in the config (env override first); empty when not found
url_hostport() { # $1 = env var name, $2 = scheme regex
    local url="${!1:-}"
    if [ -z "$url" ] && [ -f "$CONFIG" ]; then
        url="$(grep -Eo "${2}://[^[:space:]\"']+" "$CONFIG" | head -n1 || true)"
    fi
    [ -n "$url" ] || return 0
    local rest="${url#*://}"; rest="${rest#*@}"; rest="${rest%%/*}"
    local host="${rest%:*}" port="${rest##*:}"
    [ "$host" = "$rest" ] && port=""
    printf '%s %s\n' "$host" "$port"
}
answers() { # host port
    [ -n "${1:-}" ] && [ -n "${2:-}" ] || return 1
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

step "[1/3] system packages"
read -r PG_HOST PG_PORT <<<"$(url_hostport ATTUNE__DATABASE__URL 'postgres(ql)?')" || true
read -r MQ_HOST MQ_PORT <<<"$(url_hostport ATTUNE__MESSAGE_QUEUE__URL 'amqps?')" || true
MISSING=()
if [ -n "${ATTUNE_API_URL:-}" ]; then
    # External target: the suite starts nothing, so no database or broker server is needed here.
    info "external target ${ATTUNE_API_URL}: PostgreSQL and RabbitMQ servers not needed"
elif have_pg_server; then
    info "PostgreSQL server: $(compgen -G '/usr/lib/postgresql/*/bin/postgres' | sort -V | tail -n1 || command -v postgres)"
elif answers "${PG_HOST:-}" "${PG_PORT:-}"; then
    info "PostgreSQL server: not installed, but ${PG_HOST}:${PG_PORT} answers (using it)"
else
    MISSING+=(postgresql)
fi
if [ -n "${ATTUNE_API_URL:-}" ]; then
    :
elif have_rabbitmq; then
    info "RabbitMQ server: installed"
elif answers "${MQ_HOST:-}" "${MQ_PORT:-}"; then
    info "RabbitMQ server: not installed, but ${MQ_HOST}:${MQ_PORT} answers (using it)"
else
    MISSING+=(rabbitmq-server)
fi
NEED_VENV_PKG=0
if [ ! -x "$PY" ] && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    NEED_VENV_PKG=1
fi
command -v bwrap >/dev/null 2>&1 || info "bubblewrap (bwrap): not installed (container actions need it)"

if [ "${#MISSING[@]}" -gt 0 ] || [ "$NEED_VENV_PKG" = 1 ]; then
    PKGS=()
    [ "${#MISSING[@]}" -gt 0 ] && PKGS+=(postgresql rabbitmq-server bubblewrap)
    [ "$NEED_VENV_PKG" = 1 ] && PKGS+=(python3-venv)
    if [ "$(id -u)" != 0 ] || [ -n "${ATTUNE_E2E_SKIP_APT:-}" ] || ! command -v apt-get >/dev/null 2>&1; then
        die "missing: ${MISSING[*]:-} $([ "$NEED_VENV_PKG" = 1 ] && echo python3-venv). Install them as root:
    apt-get install ${PKGS[*]}
or point ATTUNE__DATABASE__URL / ATTUNE__MESSAGE_QUEUE__URL at running servers."
    fi
    info "installing with apt-get: ${PKGS[*]}"
    # Keep Debian's maintainer scripts from starting system instances (we run our own).
    POLICY=/usr/sbin/policy-rc.d
    CREATED_POLICY=0
    if [ ! -e "$POLICY" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$POLICY"; chmod 755 "$POLICY"; CREATED_POLICY=1
    fi
    trap '[ "$CREATED_POLICY" = 1 ] && rm -f "$POLICY"' EXIT
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${PKGS[@]}" >/dev/null
    [ "$CREATED_POLICY" = 1 ] && rm -f "$POLICY"
    CREATED_POLICY=0
    have_pg_server || die "PostgreSQL server still missing after apt-get install postgresql"
    info "installed: ${PKGS[*]}"
fi
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
    info "node $(node --version 2>/dev/null), npm $(npm --version 2>/dev/null)"
else
    info "node/npm: not installed (Node.js runner tests will skip or fail; apt-get install nodejs npm)"
fi

# ---------------------------------------------------------------------------------------------
# 2. Python environment

step "[2/3] Python environment (.venv)"
REQS=(requirements.txt)
[ -f requirements-test.txt ] && REQS+=(requirements-test.txt)
if [ -x "$PY" ] && ! "$PY" -c 'import sys' >/dev/null 2>&1; then
    info "broken .venv, recreating"; rm -rf "$VENV"
fi
if [ ! -x "$PY" ]; then
    python3 -m venv "$VENV"
    info "created $VENV ($("$PY" --version))"
fi
WANT="$(cat "${REQS[@]}" | sha256sum | cut -d' ' -f1)"
MARKER="$VENV/.requirements.sha256"
if [ "$(cat "$MARKER" 2>/dev/null || true)" != "$WANT" ]; then
    info "installing ${REQS[*]}"
    PIP_ARGS=()
    for r in "${REQS[@]}"; do PIP_ARGS+=(-r "$r"); done
    "$PY" -m pip install -q --disable-pip-version-check "${PIP_ARGS[@]}"
    echo "$WANT" >"$MARKER"
else
    info "requirements unchanged ($("$PY" --version))"
fi

# ---------------------------------------------------------------------------------------------
# 3. pytest

mkdir -p reports
case "$MODE" in
    bench)
        step "[3/3] benchmark: python -m bench ${ARGS[*]:-}"
        exec "$PY" -m bench ${ARGS[@]+"${ARGS[@]}"}
        ;;
    run)
        step "[3/3] pytest ${ARGS[*]:-}"
        exec "$PY" -m pytest ${ARGS[@]+"${ARGS[@]}"}
        ;;
    unit)
        step "[3/3] pytest tests/unit ${ARGS[*]:-}"
        exec "$PY" -m pytest tests/unit -p no:cacheprovider \
            --junitxml=reports/junit-unit.xml ${ARGS[@]+"${ARGS[@]}"}
        ;;
    all)
        step "[3/3] pytest tests/unit, then the tiers ${ARGS[*]:-}"
        set +e
        "$PY" -m pytest tests/unit --junitxml=reports/junit-unit.xml
        UNIT_RC=$?
        "$PY" -m pytest ${ARGS[@]+"${ARGS[@]}"}
        E2E_RC=$?
        set -e
        for rc_name in UNIT_RC E2E_RC; do
            [ "${!rc_name}" = 5 ] && printf 'error: %s: no tests were collected\n' "${rc_name%_RC}" >&2
        done
        printf '==> unit: exit %s, tiers: exit %s\n' "$UNIT_RC" "$E2E_RC"
        if [ "$UNIT_RC" != 0 ] || [ "$E2E_RC" != 0 ]; then
            [ "$E2E_RC" != 0 ] && [ "$E2E_RC" != 5 ] && exit "$E2E_RC"
            [ "$UNIT_RC" != 0 ] && [ "$UNIT_RC" != 5 ] && exit "$UNIT_RC"
            exit 1
        fi
        exit 0
        ;;
esac
