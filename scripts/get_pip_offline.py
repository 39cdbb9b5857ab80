"""Offline stand-in for get-pip.py, used by ansible-test to bootstrap pip in its venvs.

ansible-test runs this with get-pip's arguments. We bootstrap pip from the interpreter's own
ensurepip, then run `pip install` with those arguments less get-pip's own flags.
"""

import os
import subprocess
import sys

GET_PIP_ONLY_FLAGS = {"--no-setuptools", "--no-wheel"}


def main():
    subprocess.run([sys.executable, "-m", "ensurepip", "--upgrade", "--default-pip"], check=True)
    # ensurepip points PIP_CONFIG_FILE at /dev/null, which would hide /etc/pip.conf (its `cert`).
    env = dict(os.environ)
    env.pop("PIP_CONFIG_FILE", None)
    args = [a for a in sys.argv[1:] if a not in GET_PIP_ONLY_FLAGS]
    if args:
        subprocess.run([sys.executable, "-m", "pip", "install", *args], check=True, env=env)


if __name__ == "__main__":
    main()
