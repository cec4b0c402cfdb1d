"""The ground floor: general helpers every other package may use (command-line errors, process set-up,
atomic checkpoint files and resume paths, sample grids and the metrics log). It imports nothing else of the
repository."""
