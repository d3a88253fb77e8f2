"""Real video files made for tests and the demo (frame i shows i; broken and damaged files).

Not part of the production data package: nothing in training or evaluation imports it.
"""
