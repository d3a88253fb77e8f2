"""Video data: prepared TFDS datasets read without TensorFlow, and the host input pipeline.

`open_split` gives random access to a prepared split; `make_loader` turns it into batches of
frame windows (DESIGN.md "Data"). Preparing datasets (`prepare`, `builders`) is the only part
that needs TensorFlow and is not imported here.
"""

from auxskd_jax.data.loader import START_MODES, make_loader, num_batches
from auxskd_jax.data.reader import VideoSource, open_split

__all__ = ["START_MODES", "VideoSource", "make_loader", "num_batches", "open_split"]
