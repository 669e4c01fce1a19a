"""`python -m bulkgetty`."""

import sys

from bulkgetty.cli.main import main

sys.exit(main())
