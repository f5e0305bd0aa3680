"""`python tune.py [COMMAND] ...`: `bmlr-tune` (run, the default; export, compare, report, surface,
recipe; `--help` lists them): see bmlr/tuning/cli.py and docs/tuning.md."""
from bmlr.tuning.cli import main
if __name__ == "__main__":
    raise SystemExit(main())
