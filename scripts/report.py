#!/usr/bin/env python
"""Write (or rewrite) a trial's report page, TRIAL/save/report.html.

    python scripts/report.py TRIAL [TRIAL ...]

launch.py writes it at the end of --train and --test; this rebuilds it, e.g. for an older trial or after an
--export. The page is self-contained: plots are embedded, renders and the test video are linked relatively.
As launch.py, it refuses a trial holding a symbolic link that leads out of it (exit 2): it writes only inside it.
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a script: make the repository's packages importable
    sys.path.insert(0, ROOT)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trials", nargs="+", help="trial folders (holding configs/parsed.yaml)")
    args = parser.parse_args(argv)
    from threestudio.runner import check_trial_links
    from threestudio.utils.errors import UserError
    from threestudio.utils.io import confined_writes
    from threestudio.utils.report import write_report

    for trial in args.trials:
        if not os.path.isfile(os.path.join(trial, "configs", "parsed.yaml")):
            print(f"error: {trial} is not a trial folder (no configs/parsed.yaml)", file=sys.stderr)
            return 2
        try:
            check_trial_links(trial)  # a save/ linked out of the trial would take the page outside it
            with confined_writes(trial):
                print(write_report(trial))
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
