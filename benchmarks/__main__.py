"""`python -m benchmarks`: see `benchmarks.harness`."""

import sys

from .harness import main

sys.exit(main())
