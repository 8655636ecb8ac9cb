"""`python -m sgdcli` runs the command line."""

from sgdcli.cli.app import main

main()
