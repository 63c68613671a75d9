"""GPFA vs elephant (see :mod:`analysis.gpfa_benchmark`); same as ``pcsim bench gpfa``."""

import sys

from analysis.gpfa_benchmark import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
