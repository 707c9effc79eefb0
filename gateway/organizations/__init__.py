"""Organizations: the sites a patient sends studies to (RSNA Image Share phase 2)."""
