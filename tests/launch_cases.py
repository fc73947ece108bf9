"""Run several ``launch.py`` command lines in ONE Python process (imports paid once) and report each outcome.

    python tests/launch_cases.py < cases.json > results.json

stdin: a JSON list of argv lists. stdout: a JSON list of ``{"rc": exit code, "errors": [lines of stderr that
start with "error:"], "traceback": bool}``, one per case, in order. Used by the CLI tests to group bad inputs.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def run_case(argv: list) -> dict:
    import launch

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = launch.main(argv)
        except SystemExit as e:  # argparse
            rc = e.code
        except BaseException as e:  # an uncaught exception is what `python launch.py` shows as a traceback
            print(f"Traceback: {type(e).__name__}: {e}", file=sys.stderr)
            rc = 1
    text = err.getvalue()
    return {
        "rc": rc,
        "errors": [ln for ln in text.splitlines() if ln.startswith("error:")],
        "traceback": "Traceback" in text,
    }


def main() -> None:
    cases = json.load(sys.stdin)
    results = [run_case(argv) for argv in cases]
    sys.stdout.write(json.dumps(results))


if __name__ == "__main__":
    main()
