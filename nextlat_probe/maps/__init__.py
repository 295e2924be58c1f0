"""Maps shipped with the package (see README.md here: provenance and licence)."""
