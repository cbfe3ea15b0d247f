import sys

from .stopsignals import catch_if_serving

# before the imports of the command line and the runtime, which take seconds on a busy machine (gateway/stopsignals.py)
catch_if_serving(sys.argv[1:])

from .cli import main  # noqa: E402 -- imported after the signals are caught, on purpose

sys.exit(main())
