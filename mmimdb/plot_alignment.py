"""Stage 4 of the MM-IMDb study: alignment vs performance per vision family, overall and per genre.

Run with --help for the options; see platonic.mmimdb.commands.
"""

from platonic.errors import run_cli
from platonic.mmimdb.commands import plot_main

if __name__ == "__main__":
    run_cli(plot_main)
