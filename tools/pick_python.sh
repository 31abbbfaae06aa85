#!/usr/bin/env bash
# Chooses the Python interpreter and the install stack (the set of pins) for the Makefile.
#
#   tools/pick_python.sh [--python PY] [--venv DIR] [--newest]
#
# Prints one line. On success:
#   ok <interpreter> <stack> <requirements file> <sentence for the user>
# otherwise:
#   error <sentence saying what to install or change>
# and exits 1.
#
# The stacks (keep in step with the README's matrix):
#   proven: CPython 3.10-3.11, requirements.txt (TensorFlow 2.15.1)
#   newest: CPython 3.12-3.13, requirements-newest.txt (the newest TensorFlow)
#
# Without --python: an existing DIR/bin/python keeps its stack; else a python3.11 or python3.10
# on the PATH that runs; else python3. With --newest (used by CI for its second corner): the
# newest python3.13 or python3.12 that runs. An interpreter counts only if it runs; a name like
# python3.12 whose pyenv shim fails (installed but not selected) means pyenv's 3.12.
set -u

python_arg=''
venv=''
want_newest=0
while [ $# -gt 0 ]; do
    case "$1" in
        --python) python_arg="${2:-}"; shift 2 ;;
        --venv) venv="${2:-}"; shift 2 ;;
        --newest) want_newest=1; shift ;;
        *) echo "error tools/pick_python.sh: unknown argument '$1'"; exit 1 ;;
    esac
done

SUPPORTED='CPython 3.10 to 3.13 (3.10/3.11 with TensorFlow 2.15.1, 3.12/3.13 with the newest TensorFlow)'

# "3.11" for an interpreter that runs, nothing otherwise.
minor_version() {
    "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null
}

# The interpreter to use for a name: itself if it runs; for a name like python3.12 that does
# not (pyenv's shim of a version installed but not selected), pyenv's newest 3.12.x.
resolve() {
    local name=$1 minor root dir
    if [ -n "$(minor_version "$name")" ]; then
        echo "$name"
        return
    fi
    case "$name" in
        python3.[0-9]|python3.[0-9][0-9]) minor=${name#python} ;;
        *) echo "$name"; return ;;
    esac
    root=''
    if command -v pyenv >/dev/null 2>&1; then
        root=$(pyenv root 2>/dev/null)
    fi
    if [ -z "$root" ]; then   # pyenv's shims on the PATH without pyenv itself
        root=${PYENV_ROOT:-$HOME/.pyenv}
    fi
    if [ -d "$root/versions" ]; then
        for dir in $(ls -d "$root"/versions/"$minor".* 2>/dev/null | sort -V -r); do
            if [ -n "$(minor_version "$dir/bin/$name")" ]; then
                echo "$dir/bin/$name"
                return
            fi
        done
    fi
    echo "$name"
}

stack_of() {
    case "$1" in
        3.10|3.11) echo proven ;;
        3.12|3.13) echo newest ;;
        *) echo none ;;
    esac
}

requirements_of() {
    if [ "$1" = proven ]; then echo requirements.txt; else echo requirements-newest.txt; fi
}

describe() {  # stack version interpreter
    if [ "$1" = proven ]; then
        echo "Stack: proven (Python $2 at $3, TensorFlow 2.15.1 from requirements.txt)"
    else
        echo "Stack: newest (Python $2 at $3, the newest TensorFlow from requirements-newest.txt)"
    fi
}

choose() {  # interpreter name
    local python version stack
    python=$(resolve "$1")
    version=$(minor_version "$python")
    if [ -z "$version" ]; then
        echo "error $1 does not run. Install $SUPPORTED, or name one with PYTHON=python3.X"
        exit 1
    fi
    stack=$(stack_of "$version")
    if [ "$stack" = none ]; then
        echo "error Python $version ($1) is not supported: install $SUPPORTED and run again, e.g. make demo PYTHON=python3.12"
        exit 1
    fi
    echo "ok $python $stack $(requirements_of "$stack") $(describe "$stack" "$version" "$python")"
    exit 0
}

# An existing virtual environment decides, unless it contradicts an explicit PYTHON.
if [ -n "$venv" ] && [ -x "$venv/bin/python" ]; then
    venv_version=$(minor_version "$venv/bin/python")
    venv_stack=$(stack_of "$venv_version")
    if [ -z "$venv_version" ] || [ "$venv_stack" = none ]; then
        echo "error $venv holds an interpreter that does not run or is not supported (${venv_version:-broken}): remove $venv and run again"
        exit 1
    fi
    if [ -n "$python_arg" ]; then
        wanted=$(minor_version "$(resolve "$python_arg")")
        if [ "$(stack_of "$wanted")" = none ]; then
            choose "$python_arg"   # says why it can't be used
        fi
        if [ "$wanted" != "$venv_version" ]; then
            echo "error $venv was made with Python $venv_version, but PYTHON=$python_arg is Python $wanted: remove $venv, or keep both with VENV=.venv-$wanted"
            exit 1
        fi
    fi
    echo "ok $venv/bin/python $venv_stack $(requirements_of "$venv_stack") $(describe "$venv_stack" "$venv_version" "$venv/bin/python")"
    exit 0
fi

if [ -n "$python_arg" ]; then
    choose "$python_arg"
fi

if [ "$want_newest" = 1 ]; then
    for candidate in python3.13 python3.12; do
        if [ "$(stack_of "$(minor_version "$(resolve "$candidate")")")" = newest ]; then
            choose "$candidate"
        fi
    done
    echo "error no Python 3.12 or 3.13 found that runs (looked for python3.13 and python3.12 on the PATH and in pyenv): install one"
    exit 1
fi

for candidate in python3.11 python3.10; do
    if [ -n "$(minor_version "$(resolve "$candidate")")" ]; then
        choose "$candidate"
    fi
done
choose python3
