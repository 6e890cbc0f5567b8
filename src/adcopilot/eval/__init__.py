"""Evaluation: MMAD and MMAD-BBox scoring, detection metrics, backends, resumable runs, bundled benchmark."""
