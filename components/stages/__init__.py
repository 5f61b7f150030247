"""One module per stage, each with ``run(params, ...)``: what ``python -m pipeline.<stage>`` does, callable
from Python and tests. The pipeline/ CLIs only parse arguments and call these."""
