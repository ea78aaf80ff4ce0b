import sys

from bayesim.cli import console_main

sys.exit(console_main())
