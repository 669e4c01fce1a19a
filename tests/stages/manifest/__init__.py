"""Tests of bulkgetty/manifest/: one file a module (fields, formats, read, write)."""
