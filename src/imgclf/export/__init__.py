"""imgclf.export."""
