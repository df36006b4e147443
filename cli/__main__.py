"""`python -m cli ...` is `audio-grpo ...`."""

import sys

from cli.main import main

sys.exit(main())
