"""`python -m reconciler` runs the same CLI as the `dms-reconciler` console script."""

from reconciler.cli.main import main

if __name__ == "__main__":
    main()
