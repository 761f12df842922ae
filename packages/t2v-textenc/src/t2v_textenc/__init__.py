"""t2v_textenc."""
