"""``python -m vcache``: the command line."""

from vcache.cli import run

run()
