"""Stage 2 of the MM-IMDb study: a linear genre probe per language model (whole lr x wd grid at once).

Run with --help for the options; see platonic.mmimdb.commands.
"""

from platonic.mmimdb.commands import probe_main
from platonic.run.exit_codes import run_cli

if __name__ == "__main__":
    run_cli(probe_main)
