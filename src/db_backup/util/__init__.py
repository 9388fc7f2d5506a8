"""Small utilities with no knowledge of the product: clocks, files, child processes, secrets."""
