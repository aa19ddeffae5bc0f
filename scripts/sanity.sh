#!/usr/bin/env bash
# make sanity: Ansible's own sanity suite (the one every collection on Galaxy runs) on our modules.
# ansible-test needs an ansible_collections/<namespace>/<name> tree, so the modules, their helpers and
# the doc fragments are laid out as the collection comfy.wrapup in a temporary folder, with only the
# imports and fragment names rewritten to the collection's; nothing else is changed.
#   scripts/sanity.sh [ansible-test sanity options...]   e.g. --test validate-modules
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
collection=$work/ansible_collections/comfy/wrapup
mkdir -p "$collection/plugins/modules" "$collection/plugins/module_utils" "$collection/plugins/doc_fragments" "$collection/tests/sanity" "$collection/meta"
cp library/*.py "$collection/plugins/modules/"
cp module_utils/*.py "$collection/plugins/module_utils/"
cp module_utils/doc_fragments/*.py "$collection/plugins/doc_fragments/"
cp LICENSE "$collection/"
cat >"$collection/galaxy.yml" <<GALAXY
namespace: comfy
name: wrapup
version: 0.1.0
readme: README.md
authors: [comfy-wrapup]
license: [GPL-3.0-or-later]
GALAXY
echo "# comfy.wrapup (sanity-test layout of comfy-wrapup's modules)" >"$collection/README.md"
echo 'requires_ansible: ">=2.16.0"' >"$collection/meta/runtime.yml"
cp tests/sanity/ignore.txt "$collection/tests/sanity/ignore-$(ansible --version | sed -n 's/^ansible \[core \([0-9]*\.[0-9]*\).*/\1/p').txt" 2>/dev/null || true
# Imports and fragment names as a collection spells them.
sed -i -E \
    -e 's/from ansible\.module_utils\.(workshop_[a-z0-9_]+) import/from ansible_collections.comfy.wrapup.plugins.module_utils.\1 import/' \
    -e 's/^  - (workshop_[a-z0-9_.]+)$/  - comfy.wrapup.\1/' \
    "$collection"/plugins/modules/*.py "$collection"/plugins/module_utils/*.py
# ansible-test fetches pip's bootstrap script from a host out of reach here: give it ours.
pip_version=$(sed -n "s/^ *pip='\([0-9.]*\)',.*/\1/p" "$(python3 -c 'import ansible_test, os; print(os.path.dirname(ansible_test.__file__))')/_internal/python_requirements.py")
mkdir -p ~/.ansible/test/cache
python3 - "$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py" <<'PY'
import subprocess, sys
settings = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True).stdout
options = {}  # the environment's PIP_* variables win over the files, as in pip itself
for line in settings.splitlines():
    key, _, value = line.partition("=")
    section, _, name = key.replace(":env:", "global").partition(".")
    if section == "global" and name and (name not in options or key.startswith(":env:")):
        options[name] = value.strip(chr(39))
conf = "[global]\n" + "".join(f"{name} = {value}\n" for name, value in options.items())
script = open("scripts/get_pip_offline.py").read().replace('PIP_CONF = ""', f"PIP_CONF = {conf!r}")
open(sys.argv[1], "w").write(script)
PY
cd "$collection"
git init -q . && git add -A >/dev/null
# compile and import run on every target Python that is on PATH: add pyenv's builds of the old ones.
for build in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.*; do
    [ -x "$build/bin/python" ] && PATH=$PATH:$build/bin
done
exec ansible-test sanity --color no "$@"
