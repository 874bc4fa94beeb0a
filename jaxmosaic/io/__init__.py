"""File input and output: atomic writes, image files, the artefact format, checkpoints."""
