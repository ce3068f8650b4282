"""``python -m sewforge.bench SUITE ...`` is ``sewforge bench SUITE ...``."""
import sys

from ..cli import main

sys.exit(main(["bench", *sys.argv[1:]]))
