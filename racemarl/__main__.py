import sys

from racemarl.cli import main

sys.exit(main())
