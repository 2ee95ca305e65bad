"""Stage 3 of the MM-IMDb study: alignment of every language model with every vision model on the test movies.

Run with --help for the options; see platonic.mmimdb.commands.
"""

from platonic.mmimdb.commands import measure_main
from platonic.run.exit_codes import run_cli

if __name__ == "__main__":
    run_cli(measure_main)
