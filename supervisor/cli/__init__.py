"""Command-line interfaces: ``ml-supervisor`` (main.py) and ``supervisorctl`` (ctl.py)."""
