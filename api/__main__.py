import sys

from nestrank.api.cli import main

sys.exit(main())
