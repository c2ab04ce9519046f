"""What every part of the service shares, below all of them: console output, step timings,
checked user inputs (paths, ``--set``), tensor files read as data only, atomic JSON files."""
