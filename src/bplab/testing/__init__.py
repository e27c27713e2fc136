"""Helpers for the tests and the benchmark, outside the pipeline's import path: real servers, a
browser, scratch copies of the repository, injected faults.
"""
