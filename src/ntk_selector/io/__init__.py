"""Reading and writing: records and their formats, feature stores, safe file writes, selection outputs."""
