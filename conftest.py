"""Repository-wide pytest configuration.

The plugin itself arrives through its ``pytest11`` entry point (``pip install
-e .``); the test suite's own fixtures live in ``tests/conftest.py``.
"""
