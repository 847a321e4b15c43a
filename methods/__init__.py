"""Methods: one module per paper or baseline, plus the building blocks they share."""
