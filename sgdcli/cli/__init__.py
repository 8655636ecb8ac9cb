"""The command line: the typer app (each command parses, calls one sgdcli.api function, renders) and rich rendering."""
