"""Data: real sources (ELPV, MVTec-style folders, MMAD), synthetic defects, Chat-AD curation."""
