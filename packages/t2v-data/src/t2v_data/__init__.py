"""t2v_data."""
