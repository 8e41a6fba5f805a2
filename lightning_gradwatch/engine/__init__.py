"""The engine, framework-free.

A fit's session (``session.py``), one lane per optimizer (``lane.py``: measure, judge, count), and the fit's
environment as a plain record (``environment.py``).
"""

__all__: list[str] = []
