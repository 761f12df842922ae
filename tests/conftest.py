import os

# The pipeline tests call the entry points' main() in the pytest process: keep its malloc at glibc's defaults rather
# than let the first such test switch the rest of the session over (t2v_model/allocator.py is tested on its own).
os.environ.setdefault("T2V_KEEP_FREED_MEMORY", "0")
