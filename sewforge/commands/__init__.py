"""One module per ``sewforge`` sub-command (see :mod:`sewforge.cli`)."""
