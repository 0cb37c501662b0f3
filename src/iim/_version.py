"""The package version, in a module of its own: ``iim --version`` and the files that record which iim
wrote them (cache manifests, checkpoints) read it without importing anything else."""
__version__ = "0.1.0"
