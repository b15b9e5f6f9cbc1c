"""vrrpd-lab as a plain `pip install` runs it, without matplotlib (argv: its arguments)."""
import sys

sys.modules["matplotlib"] = None
from vrrpd.lab import main  # noqa: E402

sys.exit(main())
