"""`python -m bulkgetty.stages.workers`: one worker process of the transfer stage (child.py)."""

import sys

from bulkgetty.stages.workers.child import main

sys.exit(main())
