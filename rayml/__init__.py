"""rayml: Ray-native end-to-end machine learning.

Importing this package has no side effects: it starts nothing, creates no directory and reads no
environment variable. Stages are imported from their own modules (``rayml.train``, ``rayml.serve``, ...).
"""

__version__ = "0.1.0"
