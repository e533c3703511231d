"""`python -m edgemtl ...`: the CLI, for a worker started with the same interpreter (tune --worker)."""

from edgemtl.cli import main

main()
