"""Pure Flax (linen) modules of MUNet. Nothing here imports TensorFlow."""
