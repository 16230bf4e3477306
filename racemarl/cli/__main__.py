"""`python -m racemarl.cli`, the same as `racemarl`."""

import sys

from racemarl.cli import main

sys.exit(main())
