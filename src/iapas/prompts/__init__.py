"""Stage 1: from normal reference images to the detector caption."""
