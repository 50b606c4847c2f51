"""Test and benchmark support that is not part of the mm-mo package."""
