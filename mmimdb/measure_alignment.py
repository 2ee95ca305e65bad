"""Stage 3 of the MM-IMDb study: alignment of every language model with every vision model on the test movies.

Run with --help for the options; see platonic.mmimdb.commands.
"""

from platonic.errors import run_cli
from platonic.mmimdb.commands import measure_main

if __name__ == "__main__":
    run_cli(measure_main)
