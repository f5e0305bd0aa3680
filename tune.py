"""`python tune.py --dataset ave --samples 64`: see bmlr/tuning/cli.py and docs/tuning.md."""
from bmlr.tuning.cli import main
if __name__ == "__main__":
    raise SystemExit(main())
