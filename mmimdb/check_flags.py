"""Check the flags of several MM-IMDb stages at once, with each stage's own parser and rules,
doing no work: `:: features FLAGS... :: performance FLAGS... :: alignment ... :: plots ...`.
mmimdb/run_mmimdb.sh runs it first, so a bad flag of the last stage stops the study before the
first stage starts. See platonic.mmimdb.commands.check_main.
"""

from platonic.mmimdb.commands import check_main
from platonic.run.exit_codes import run_cli

if __name__ == "__main__":
    run_cli(check_main)
