"""Runs one pytest suite for CTest: python3 run_pytest.py MODULE[,MODULE...] -- pytest args.

Exits 77 (CTest's SKIP_RETURN_CODE) with a message when a Python module the suite needs is not
installed (scripts/deps.sh installs them all from Debian), so a machine without them skips the
suite visibly instead of failing it; any other outcome is pytest's own exit status.
"""

import importlib
import os
import sys

SKIP = 77


def main():
    needed, _, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    missing = []
    for name in needed.split(","):
        try:
            importlib.import_module(name)
        except ImportError as e:
            missing.append(f"{name} ({e})")
    if missing:
        print(f"SKIPPED: missing Python modules: {', '.join(missing)}; scripts/deps.sh installs them", flush=True)
        return SKIP
    import pytest

    os.chdir(os.path.dirname(os.path.abspath(__file__)))
    return pytest.main(args)


if __name__ == "__main__":
    sys.exit(main())
