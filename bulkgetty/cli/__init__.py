"""The command line: parsing, the terminal display, the per-command glue (thin: every
command is a function of the layers below)."""
