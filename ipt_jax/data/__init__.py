"""Training data: degradations, image sources, the tf.data pipeline, benchmark sets."""
