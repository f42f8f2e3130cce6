"""Run folders: every file a stage writes, each read and written by one module here."""
