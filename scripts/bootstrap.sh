#!/usr/bin/env bash
# Everything `make demo` and `make test` need on a fresh Debian machine: Debian packages
# (installed with apt when root, otherwise named so an admin can install them) and the
# virtualenv in .venv with requirements-dev.txt. Safe to run again: it does only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# command -> Debian package that provides it
declare -A wanted=(
    [dockerd]=docker.io [docker-compose]=docker-compose [redis-server]=redis-server
    [busybox]=busybox-static [sshd]=openssh-server [ssh]=openssh-client
    [openssl]=openssl [rsync]=rsync [zstd]=zstd [/usr/bin/python3.11]=python3.11
    [ldd]=libc-bin [setsid]=util-linux [curl]=curl [jq]=jq [chromium]=chromium
    [7z]=p7zip-full
)
missing=()
for cmd in "${!wanted[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || [ -x "$cmd" ] || missing+=("${wanted[$cmd]}")
done
# Debian's docker.io ships no client on PATH when another docker client shadows it; that is fine.
command -v docker >/dev/null 2>&1 || missing+=(docker.io)
/usr/bin/python3.11 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3.11-venv)

if [ ${#missing[@]} -gt 0 ]; then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    if [ "$(id -u)" = 0 ]; then
        echo "Installing Debian packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "Missing Debian packages: ${missing[*]}" >&2
        echo "Install them as root: apt-get install ${missing[*]}" >&2
        exit 1
    fi
fi

stamp=.venv/.requirements.sha256
# Debian's own Python 3.11 (built with PGO and LTO): the controller's ansible runs, about half of the
# suite's CPU, take a tenth less than on a plain build such as a pyenv one earlier on PATH.
controller_python=/usr/bin/python3.11
want=$( (echo "$controller_python" && cat requirements.txt requirements-host.txt requirements-dev.txt) | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "Installing the virtualenv in .venv"
    "$controller_python" -m venv --clear .venv
    .venv/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
    echo "$want" >"$stamp"
fi
# Module payloads built once per version of the code across the tests' ansible runs, when they ask
# for it (scripts/controller_payload_cache.py says why; other runs are left as Ansible makes them).
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
if ! cmp -s scripts/controller_payload_cache.py "$site/controller_payload_cache.py"; then
    cp scripts/controller_payload_cache.py "$site/"
    echo "import controller_payload_cache" >"$site/controller_payload_cache.pth"
fi

# A workshop host's own Python for the modules in tests and the demo: Ubuntu 22.04's 3.10, from the
# machine image's pyenv builds, with only the host libraries (no Ansible: modules bring their own).
host_stamp=.venv-host/.requirements.sha256
host_want=$(cat requirements-host.txt scripts/host_bytecode_cache.py | sha256sum | cut -d' ' -f1)
host_build=$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.10.* 2>/dev/null | sort -V | tail -n 1)
if [ -z "$host_build" ]; then
    echo "No pyenv build of Python 3.10: modules will run on the control node's Python" >&2
elif [ ! -x .venv-host/bin/python ] || [ "$(cat "$host_stamp" 2>/dev/null)" != "$host_want" ]; then
    echo "Installing the workshop host's Python 3.10 in .venv-host"
    "$host_build/bin/python" -m venv --clear .venv-host
    .venv-host/bin/pip install -q --disable-pip-version-check -r requirements-host.txt
    # Module payloads compiled once, not at every task (scripts/host_bytecode_cache.py says why).
    site=$(.venv-host/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
    cp scripts/host_bytecode_cache.py "$site/"
    echo "import host_bytecode_cache" >"$site/host_bytecode_cache.pth"
    echo "$host_want" >"$host_stamp"
fi
