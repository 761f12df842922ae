"""t2v_train."""
