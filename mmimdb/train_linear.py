"""Stage 2 of the MM-IMDb study: a linear genre probe per language model (whole lr x wd grid at once).

Run with --help for the options; see platonic.mmimdb.commands.
"""

from platonic.errors import run_cli
from platonic.mmimdb.commands import probe_main

if __name__ == "__main__":
    run_cli(probe_main)
