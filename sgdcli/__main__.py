"""`python -m sgdcli` runs the command line."""

from sgdcli.cli import main

main()
