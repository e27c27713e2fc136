"""The ``bplab`` command line (main), one module per larger subcommand (compare, reproduce)."""
