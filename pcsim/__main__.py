"""``python -m pcsim``: the same command line as the ``pcsim`` script."""

from pcsim.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
