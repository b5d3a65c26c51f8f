"""Data: the Sample record and every reader that turns a format into Samples."""
