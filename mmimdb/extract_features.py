"""Stage 1 of the MM-IMDb study: features of the language models (train/dev/test plots) and the vision models (test posters).

Run with --help for the options; see platonic.mmimdb.commands.
"""

from platonic.mmimdb.commands import extract_main
from platonic.run.exit_codes import run_cli

if __name__ == "__main__":
    run_cli(extract_main)
