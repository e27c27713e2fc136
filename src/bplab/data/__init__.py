"""The datasets: one module per dataset (``DATASET``), the catalog that finds them, and how each is fetched
and stored once processed.
"""
