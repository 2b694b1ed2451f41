# shellcheck shell=bash
# Sourced (not run) by scripts/demo, scripts/test, scripts/bench and .ci/run.
#
# Leaves the caller in the repository root with a ready .venv:
#   - finds a Python >= 3.11 (python3, then python3.11 .. python3.13);
#   - creates .venv when it is missing or its interpreter is unusable;
#   - when .venv is new, or pyproject.toml or the lock file requirements/dev.txt is newer
#     than .venv/.installed-stamp: installs the locked versions (every package pinned
#     with its hashes: the dependencies, the `embedded` extra and all dependency groups;
#     scripts/lock refreshes them), then the project itself, editable, resolving nothing
#     more. pip's output is shown only when it fails.
# Safe under `set -euo pipefail`; returns non-zero (so the caller exits) on failure.

_safetyreport_venv() {
    local root candidate python="" fresh=0
    local stamp=.venv/.installed-stamp lock=requirements/dev.txt
    local version_check='import sys; sys.exit(sys.version_info < (3, 11))'

    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)" || return 1
    cd "$root" || return 1

    if ! .venv/bin/python -c "$version_check" >/dev/null 2>&1; then
        # Run each candidate: pyenv shims exist for versions that are not selected.
        for candidate in python3 python3.11 python3.12 python3.13; do
            if command -v "$candidate" >/dev/null 2>&1 \
                && "$candidate" -c "$version_check" >/dev/null 2>&1; then
                python="$candidate"
                break
            fi
        done
        if [[ -z "$python" ]]; then
            echo "error: safetyreport needs Python >= 3.11 (python3 or python3.11..python3.13)" >&2
            return 1
        fi
        echo "Creating .venv with $("$python" --version 2>&1) ..." >&2
        if ! "$python" -m venv --clear .venv; then
            echo "error: '$python -m venv .venv' failed" >&2
            return 1
        fi
        fresh=1
    fi

    if (( fresh )) || [[ ! -f "$stamp" || pyproject.toml -nt "$stamp" || "$lock" -nt "$stamp" ]]
    then
        echo "Installing safetyreport and its locked dependencies into .venv ..." >&2
        _safetyreport_pip --require-hashes --requirement "$lock" || return 1
        # Everything, the build backend included, came from the lock: nothing to resolve.
        _safetyreport_pip --no-deps --no-build-isolation --editable . || return 1
        touch "$stamp"
    fi
}

# _safetyreport_pip ARGS...: `pip install ARGS` into .venv, its output shown only on failure.
_safetyreport_pip() {
    local log
    log="$(mktemp)" || return 1
    if ! .venv/bin/python -m pip install --disable-pip-version-check "$@" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        echo "error: pip install $* failed (output above)" >&2
        return 1
    fi
    rm -f "$log"
}

_safetyreport_venv || return 1
unset -f _safetyreport_venv _safetyreport_pip
