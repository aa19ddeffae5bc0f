"""Stands in for pip's get-pip.py, which ansible-test downloads from a host this machine cannot reach.

ansible-test runs it with a new virtualenv's Python, pip's install arguments and a filtered environment
(no PIP_* variables). pip comes from the interpreter's own ensurepip; the pip settings of the calling
environment, which scripts/sanity.sh puts in PIP_CONF below, go into the virtualenv's own pip.conf so
that every later pip call of ansible-test there uses the same index and certificates.
"""

import os
import subprocess
import sys

PIP_CONF = ""  # filled in by scripts/sanity.sh
# get-pip.py's own options, which pip install does not know.
OWN_OPTIONS = {"--no-setuptools", "--no-wheel"}

with open(os.path.join(sys.prefix, "pip.conf"), "w", encoding="utf-8") as conf:
    conf.write(PIP_CONF)
# In a process of its own: ensurepip sets PIP_CONFIG_FILE=/dev/null in the environment it runs in.
subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade"])
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", *(a for a in sys.argv[1:] if a not in OWN_OPTIONS)]))
