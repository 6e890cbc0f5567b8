"""Model code: the vision tower, the Comparison Encoder, the heads and the detectors built on them."""
