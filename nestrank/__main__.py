import sys

from nestrank.cli import main

sys.exit(main())
