# shellcheck shell=bash
# Sourced (not run) by scripts/demo, scripts/test and .ci/run.
#
# Leaves the caller in the repository root with a ready .venv:
#   - finds a Python >= 3.11 (python3, then python3.11 .. python3.13);
#   - creates .venv when it is missing or its interpreter is unusable;
#   - runs `pip install -e '.[dev]'` when .venv is new or pyproject.toml is newer
#     than .venv/.installed-stamp. pip's output is shown only when it fails.
# Safe under `set -euo pipefail`; returns non-zero (so the caller exits) on failure.

_safetyreport_venv() {
    local root candidate python="" fresh=0 log
    local stamp=.venv/.installed-stamp
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

    if (( fresh )) || [[ ! -f "$stamp" || pyproject.toml -nt "$stamp" ]]; then
        echo "Installing safetyreport and its dev dependencies into .venv ..." >&2
        log="$(mktemp)" || return 1
        if ! .venv/bin/python -m pip install --disable-pip-version-check -e '.[dev]' \
            >"$log" 2>&1; then
            cat "$log" >&2
            rm -f "$log"
            echo "error: pip install -e '.[dev]' failed (output above)" >&2
            return 1
        fi
        rm -f "$log"
        touch "$stamp"
    fi
}

_safetyreport_venv || return 1
unset -f _safetyreport_venv
