"""`python -m edgekd ...` is the `edgekd` command."""
from edgekd.cli import main

main(prog_name="edgekd")
