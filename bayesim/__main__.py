import sys

from bayesim.cli import main

sys.exit(main())
