import sys

from autocompress.cli import main

sys.exit(main())
