import sys

from mdl_tvm.cli import main

sys.exit(main())
