"""Acting on a decision.

``actor.py`` carries it out (drop, scale, stop, raise); ``scaling.py`` holds the in-place gradient operations
(torch only, so measuring may use them without importing the judge).
"""

__all__: list[str] = []
