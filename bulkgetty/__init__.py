"""bulkgetty."""
