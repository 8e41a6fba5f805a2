"""Writing: what a run shows and keeps, on global rank 0.

``output.py`` turns each decision into writes, warnings and the report; ``writers.py`` hands each write to the sinks
that show it (``sinks.py``: the protocol; ``tensorboard.py``, ``logger.py``, ``report_file.py``: the sinks);
``content.py`` says what a step writes; ``pictures.py`` draws on a worker thread; ``budget.py`` keeps GradWatch's
own time within its share; ``progress.py`` is the progress bar's part.
"""

__all__: list[str] = []
