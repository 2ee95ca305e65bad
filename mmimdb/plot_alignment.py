"""Stage 4 of the MM-IMDb study: alignment vs performance per vision family, overall and per genre.

Run with --help for the options; see platonic.mmimdb.commands.
"""

from platonic.mmimdb.commands import plot_main
from platonic.run.exit_codes import run_cli

if __name__ == "__main__":
    run_cli(plot_main)
